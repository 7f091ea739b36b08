import { api } from './api.js'

// Account kinds come from the server's OpenAPI document (the AccountKind enum), so a kind added
// there appears in the wizard; kinds created through an OAuth flow get the paste-the-code wizard.
let cached = null
let doc = null
const openapi = async () => (doc ||= api('/openapi.json').catch(() => ({})))
export async function accountKinds() {
  if (cached) return cached
  cached = (await openapi())?.components?.schemas?.AccountKind?.enum || []
  if (!cached.length) cached = ['claude-console', 'claude-oauth', 'ccr', 'bedrock', 'openai', 'azure-openai', 'openai-oauth', 'gemini-api', 'gemini-oauth', 'claude-passthrough']
  return cached
}
export const isOAuth = (kind) => kind.endsWith('-oauth')
// Fields of the generic form by kind (beyond name, base_url and the common ones).
export function kindFields(kind) {
  switch (kind) {
    case 'bedrock': return ['region', 'api_key', 'access_key_id', 'secret_access_key']
    case 'azure-openai': return ['api_key', 'api_version']
    case 'claude-passthrough': return []
    default: return ['api_key']
  }
}
// The fields an account update takes (the UpdateAccount schema); null when the document has none.
export async function patchFields() {
  const props = (await openapi())?.components?.schemas?.UpdateAccount?.properties
  return props ? Object.keys(props) : null
}
