// Times the web panel against a relay holding a realistic amount of data (see README.md beside
// this): for each store backend, it starts the release relay (built with the `panel` feature),
// creates the accounts and keys through the admin API, stops it, seeds the usage history into the
// store with `examples/panel_seed.rs`, starts it again, then measures each panel API's latency
// and, in Debian's Chromium, the time to first render of the Overview and Keys pages.
// Env: RELAY_BIN, SEED_BIN, MOCK_BIN, OUT (Markdown report), REDIS_URL (default
// redis://127.0.0.1:6379/), KEYS (2000), ACCOUNTS (50), DAYS (90), RUNS (20), BACKENDS
// (embedded,redis), CHROMIUM.
import { spawn, execFileSync } from 'node:child_process'
import { mkdtempSync, writeFileSync, rmSync, openSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { createRequire } from 'node:module'

// playwright-core comes from the panel's own dev dependencies (web/node_modules).
const { chromium } = createRequire(resolve(import.meta.dirname, '../../web/package.json'))('playwright-core')

const env = (k, d) => process.env[k] ?? d
const RELAY_BIN = env('RELAY_BIN')
const SEED_BIN = env('SEED_BIN')
const MOCK_BIN = env('MOCK_BIN')
const OUT = env('OUT')
const REDIS_URL = env('REDIS_URL', 'redis://127.0.0.1:6379/')
const N_KEYS = Number(env('KEYS', 2000))
const N_ACCOUNTS = Number(env('ACCOUNTS', 50))
const DAYS = Number(env('DAYS', 90))
const RUNS = Number(env('RUNS', 20))
const BACKENDS = env('BACKENDS', 'embedded,redis').split(',')
const PASSWORD = 'panel-measure-admin-password'
const SECRET = '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const freePort = () => new Promise((res) => { const s = createServer(); s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => res(p)) }) })

async function waitFor(what, fn, ms = 30000) {
  const end = Date.now() + ms
  for (;;) {
    try { if (await fn()) return } catch {}
    if (Date.now() > end) throw new Error(`${what} not ready within ${ms} ms`)
    await sleep(100)
  }
}

function startRelay(conf, log) {
  const out = openSync(log, 'a')
  const p = spawn(RELAY_BIN, ['--config', conf], { stdio: ['ignore', out, out], env: { ...process.env, RELAY_LOG: 'warn' } })
  return p
}
async function stopRelay(p) {
  if (p.exitCode != null) return
  const done = new Promise((r) => p.once('exit', r))
  p.kill('SIGTERM')
  await done
}

async function adminCall(base, token, method, path, body) {
  const r = await fetch(`${base}/admin/api${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: body && JSON.stringify(body),
  })
  const text = await r.text()
  if (r.status >= 400) throw new Error(`${method} ${path}: ${r.status} ${text.slice(0, 300)}`)
  return { status: r.status, text, json: (() => { try { return JSON.parse(text) } catch { return null } })() }
}

const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] }
const ms = (x) => x.toFixed(x < 10 ? 2 : 1)

async function measureBackend(backend, browser) {
  const dir = mkdtempSync(join(tmpdir(), `panel-measure-${backend}-`))
  const [mockPort, relayPort, adminPort] = [await freePort(), await freePort(), await freePort()]
  const mock = spawn(MOCK_BIN, ['--listen', `127.0.0.1:${mockPort}`, '--threads', '1'], { stdio: 'ignore' })
  const prefix = `panel-measure-${process.pid}-${backend}:`
  const store = backend === 'redis'
    ? `store: { backend: redis, url: "${REDIS_URL}", prefix: "${prefix}" }`
    : `store: { backend: embedded, path: ${dir} }`
  const conf = join(dir, 'relay.yaml')
  writeFileSync(conf, `listen: 127.0.0.1:${relayPort}
admin: { listen: 127.0.0.1:${adminPort}, username: admin, password: ${PASSWORD} }
secret_key: ${SECRET}
data_dir: ${dir}
${store}
shutdown_grace: 1s
stats_page: true
stats: { self_service: { per_minute: 100000 } }
`)
  const admin = `http://127.0.0.1:${adminPort}`
  const log = join(dir, 'relay.log')
  const started = async () => {
    const p = startRelay(conf, log)
    await waitFor('relay admin', async () => (await fetch(`${admin}/health`)).status < 600)
    return p
  }
  const login = async () => (await adminCall(admin, null, 'POST', '/login', { username: 'admin', password: PASSWORD })).json.token
  const row = { backend }
  let relay = await started()
  try {
    let token = await login()
    // The accounts and keys, through the API like an operator would create them.
    let t0 = Date.now()
    const accounts = []
    for (let i = 0; i < N_ACCOUNTS; i++) {
      const a = await adminCall(admin, token, 'POST', '/accounts', {
        name: `acct-${String(i).padStart(2, '0')}`, kind: 'claude-console', base_url: `http://127.0.0.1:${mockPort}`,
        api_key: `sk-ant-api03-measure-${i}`, group: `g${i % 5}`, priority: 50 + (i % 3),
      })
      accounts.push(a.json.id)
    }
    const keys = []
    const plain = new Map()
    for (let i = 0; i < N_KEYS; i += 100) {
      const b = await adminCall(admin, token, 'POST', '/keys/batch', {
        create: { count: Math.min(100, N_KEYS - i), name_prefix: `team-${i / 100}-`, cost_limits: { daily_usd: 50 }, rate_limit: { window_minutes: 60, requests: 1000 } },
      })
      for (const k of b.json.results) if (k.ok) { keys.push(k.id); plain.set(k.id, k.key) }
    }
    if (keys.length !== N_KEYS) throw new Error(`created ${keys.length} keys, wanted ${N_KEYS}`)
    row.create_s = (Date.now() - t0) / 1000
    // The history, written into the store while no relay holds it.
    await stopRelay(relay)
    const ids = join(dir, 'ids.json')
    writeFileSync(ids, JSON.stringify({ keys, accounts }))
    t0 = Date.now()
    const seedArgs = ['--ids', ids, '--days', String(DAYS), ...(backend === 'redis' ? ['--redis', REDIS_URL, '--prefix', prefix] : ['--embedded', dir])]
    row.seed = execFileSync(SEED_BIN, seedArgs, { encoding: 'utf8' }).trim()
    row.seed_s = (Date.now() - t0) / 1000
    relay = await started()
    token = await login()

    // API latency: one warm-up call, then RUNS timed calls, one at a time.
    const now = Math.floor(Date.now() / 1000)
    const d = (n) => now - n * 86400
    const someKey = keys[keys.length >> 1]
    const apis = [
      ['me', '/me'],
      ['overview', '/overview'],
      ['usage/summary', '/usage/summary'],
      ['usage/global 24 h hourly', `/usage/global?granularity=hour&from=${d(1)}&to=${now}`],
      ['usage/global 30 d daily', `/usage/global?granularity=day&from=${d(30)}&to=${now}`],
      ['usage/global 90 d daily', `/usage/global?granularity=day&from=${d(90)}&to=${now}`],
      ['usage/top key 24 h', `/usage/top?dimension=key&metric=cost&from=${d(1)}&to=${now}&limit=10`],
      ['usage/top key 30 d', `/usage/top?dimension=key&metric=cost&from=${d(30)}&to=${now}&limit=10`],
      ['usage/top account 30 d', `/usage/top?dimension=account&metric=cost&from=${d(30)}&to=${now}&limit=10`],
      ['usage/top model 30 d', `/usage/top?dimension=model&metric=cost&from=${d(30)}&to=${now}&limit=10`],
      ['usage/range key 30 d', `/usage/range?dimension=key&from=${d(30)}&to=${now}`],
      ['usage one key 90 d daily', `/usage?dimension=key&id=${encodeURIComponent(someKey)}&granularity=day&from=${d(90)}&to=${now}`],
      ['usage/export.csv key 30 d daily', `/usage/export.csv?dimension=key&granularity=day&from=${d(30)}&to=${now}`],
      ['keys page 1 (50, default sort)', '/keys?page=1&per_page=50'],
      ['keys page 1 sorted by 30 d cost', '/keys?page=1&per_page=50&sort=cost_30d&order=desc'],
      ['keys search', '/keys?page=1&per_page=50&q=team-7-'],
      ['keys (all, unpaged)', '/keys'],
      ['keys/{id}/limits', `/keys/${encodeURIComponent(someKey)}/limits`],
      ['keys/{id}/models 30 d', `/keys/${encodeURIComponent(someKey)}/models?from=${d(30)}&to=${now}`],
      ['live?key=', `/live?key=${encodeURIComponent(someKey)}`],
      ['accounts', '/accounts'],
      ['groups', '/groups'],
      ['live', '/live'],
    ]
    row.api = []
    // The key holders' own page calls this on the relay listener, with the key.
    const relayBase = `http://127.0.0.1:${relayPort}`
    const ownKey = plain.get(someKey)
    apis.push(['key holder: /v1/key/usage (relay listener)', `${relayBase}/v1/key/usage?granularity=hour`])
    for (const [name, path] of apis) {
      let bytes = 0
      let status = 0
      const times = []
      for (let i = 0; i <= RUNS; i++) {
        const t = performance.now()
        const r = path.startsWith('http')
          ? await fetch(path, { headers: { 'x-api-key': ownKey } })
          : await fetch(`${admin}/admin/api${path}`, { headers: { authorization: `Bearer ${token}` } })
        const body = await r.arrayBuffer()
        const el = performance.now() - t
        status = r.status
        bytes = body.byteLength
        if (i > 0) times.push(el)
      }
      row.api.push({ name, status, bytes, p50: pct(times, 50), p95: pct(times, 95) })
    }

    // Time to first render: from navigation to the page showing its data, logged in, 5 runs
    // each in a fresh tab of one context (the browser cache is warm after the first).
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 }, locale: 'en-US' })
    await ctx.addInitScript((t) => sessionStorage.setItem('relay.token', t), token)
    const pages = [
      ['Overview', '/ui/', async (p) => {
        await p.waitForFunction(() => {
          const v = document.querySelector('[data-card=requests] [data-value]')
          return v && v.textContent.trim() !== '' && v.textContent.trim() !== '—' &&
            document.querySelector('[data-test=chart-requests] canvas') && document.querySelector('[data-test=chart-models] canvas')
        }, null, { timeout: 60000 })
      }],
      ['Keys', '/ui/keys', async (p) => {
        await p.waitForFunction(() => document.querySelectorAll('[data-test=keys-table] tbody tr[data-key]').length >= 20, null, { timeout: 60000 })
      }],
    ]
    row.render = []
    for (const [name, path, ready] of pages) {
      const times = []
      for (let i = 0; i < 6; i++) {
        const p = await ctx.newPage()
        const t = Date.now()
        await p.goto(`${admin}${path}`)
        await ready(p)
        const el = Date.now() - t
        if (i > 0) times.push(el) // the first run fills the browser cache
        await p.close()
      }
      row.render.push({ name, p50: pct(times, 50), max: Math.max(...times), cold: null })
    }
    await ctx.close()
  } finally {
    await stopRelay(relay)
    mock.kill()
    if (backend === 'redis') {
      // Every key of this run's prefix (hundreds of thousands of buckets), a thousand at a time.
      execFileSync('sh', ['-c', 'redis-cli -u "$1" --scan --pattern "$2*" | xargs -r -n 1000 redis-cli -u "$1" del >/dev/null', 'sh', REDIS_URL, prefix])
    }
    rmSync(dir, { recursive: true, force: true })
  }
  return row
}

const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
})
const rows = []
try {
  for (const b of BACKENDS) {
    console.error(`panel-measure: ${b} …`)
    rows.push(await measureBackend(b, browser))
  }
} finally {
  await browser.close()
}

let md = `# Web panel timings\n\n${N_KEYS} keys, ${N_ACCOUNTS} accounts, ${DAYS} days of usage; release build with \`--features panel\`; `
md += `each API called once to warm up, then ${RUNS} times one after another (p50 / p95 of the whole HTTP exchange, from Node on the same host); `
md += `pages timed in Chromium from navigation start until the data is on screen (median of 5 after one warm-up load).\n\n`
for (const r of rows) md += `- ${r.backend}: created in ${r.create_s.toFixed(1)} s; ${r.seed} (${r.seed_s.toFixed(1)} s with start-up)\n`
md += `\n## Time to first render\n\n| page | ${rows.map((r) => `${r.backend} p50 (max)`).join(' | ')} |\n|---|${rows.map(() => '---:').join('|')}|\n`
for (let i = 0; i < rows[0].render.length; i++) md += `| ${rows[0].render[i].name} | ${rows.map((r) => `${r.render[i].p50} ms (${r.render[i].max})`).join(' | ')} |\n`
md += `\n## API latency\n\n| call | ${rows.map((r) => `${r.backend} p50 / p95 ms`).join(' | ')} | bytes |\n|---|${rows.map(() => '---:').join('|')}|---:|\n`
for (let i = 0; i < rows[0].api.length; i++) {
  const a = rows[0].api[i]
  md += `| ${a.name} | ${rows.map((r) => { const x = r.api[i]; return x.status === 200 ? `${ms(x.p50)} / ${ms(x.p95)}` : `HTTP ${x.status}` }).join(' | ')} | ${a.bytes} |\n`
}
console.log(md)
if (OUT) writeFileSync(OUT, md)
