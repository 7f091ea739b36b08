// Setup snippets for the three CLIs, with the relay's public URL filled in.
export function relayBase() {
  // The relay listener is not the admin listener; the admin page can only guess it from its own host.
  return localStorage.getItem('relay.public_url') || `${location.protocol}//${location.hostname}:8080`
}
export function snippets(base, key) {
  return {
    claude: `export ANTHROPIC_BASE_URL=${base}\nexport ANTHROPIC_AUTH_TOKEN=${key}\nclaude`,
    codex: `# ~/.codex/config.toml\nmodel_provider = "relay"\n[model_providers.relay]\nname = "claude-relay"\nbase_url = "${base}/v1"\nenv_key = "RELAY_API_KEY"\nwire_api = "responses"\n\n# shell\nexport RELAY_API_KEY=${key}\ncodex`,
    gemini: `export GOOGLE_GEMINI_BASE_URL=${base}\nexport GEMINI_API_KEY=${key}\ngemini`,
  }
}
