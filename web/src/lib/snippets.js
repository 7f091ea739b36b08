// Setup snippets for the three CLIs, with the relay's public URL filled in (paths as in the README).
export function relayBase() {
  // The relay listener is not the admin listener; the admin page can only guess it from its own host.
  return localStorage.getItem('relay.public_url') || `${location.protocol}//${location.hostname}:3000`
}
export function snippets(base, key) {
  return {
    claude: `ANTHROPIC_BASE_URL=${base}/api ANTHROPIC_AUTH_TOKEN=${key} claude`,
    codex: `# ~/.codex/config.toml\nmodel_provider = "relay"\n[model_providers.relay]\nname = "relay"\nbase_url = "${base}/v1"\nenv_key = "RELAY_API_KEY"\nwire_api = "responses"\n\n# shell\nRELAY_API_KEY=${key} codex`,
    gemini: `# ~/.gemini/settings.json\n{ "security": { "auth": { "selectedType": "gemini-api-key" } } }\n\n# shell\nGOOGLE_GEMINI_BASE_URL=${base}/gemini GEMINI_API_KEY=${key} gemini`,
  }
}
