// Setup snippets for the three CLIs, with the relay's public URL filled in (paths as in the README).
import { optional } from './api.js'
import { me } from './me.js'

/**
 * The relay's URL for the snippets: the public address in the settings, else the one saved in this
 * browser, else the relay listener's address as `/me` gives it (`listen`; a wildcard host means
 * this page's host), else a guess on port 3000.
 */
export function relayBase(listen) {
  if (me.value?.public_base_url) return me.value.public_base_url
  const saved = localStorage.getItem('relay.public_url')
  if (saved) return saved
  const m = /^(.*):(\d+)$/.exec(listen || '')
  if (!m) return `http://${location.hostname}:3000`
  let host = m[1]
  if (['0.0.0.0', '[::]', '::'].includes(host)) host = location.hostname.includes(':') ? `[${location.hostname}]` : location.hostname
  // The relay listener speaks plain HTTP; behind a TLS proxy the admin saves the public URL.
  return `http://${host}:${m[2]}`
}
let listen
/** The relay listener's address from `/me`, asked once per page load (null on older servers). */
export function relayListen() {
  listen ??= optional('/me')
    .then((me) => me?.relay_listen || null)
    .catch(() => null)
    .then((l) => {
      if (!l) listen = undefined
      return l
    })
  return listen
}
export function snippets(base, key) {
  return {
    claude: `ANTHROPIC_BASE_URL=${base}/api ANTHROPIC_AUTH_TOKEN=${key} claude`,
    codex: `# ~/.codex/config.toml\nmodel_provider = "relay"\n[model_providers.relay]\nname = "relay"\nbase_url = "${base}/v1"\nenv_key = "RELAY_API_KEY"\nwire_api = "responses"\n\n# shell\nRELAY_API_KEY=${key} codex`,
    gemini: `# ~/.gemini/settings.json\n{ "security": { "auth": { "selectedType": "gemini-api-key" } } }\n\n# shell\nGOOGLE_GEMINI_BASE_URL=${base}/gemini GEMINI_API_KEY=${key} gemini`,
  }
}
