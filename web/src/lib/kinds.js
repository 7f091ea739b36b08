import { api } from './api.js'

// Account kinds come from the server's OpenAPI document (the AccountKind enum), so a kind added
// there appears in the wizard; kinds created through an OAuth flow get the paste-the-code wizard.
let cached = null
export async function accountKinds() {
  if (cached) return cached
  try {
    const doc = await api('/openapi.json')
    cached = doc?.components?.schemas?.AccountKind?.enum || []
  } catch {
    cached = []
  }
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
