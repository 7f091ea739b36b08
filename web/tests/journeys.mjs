// Browser journeys of the web panel (design/PANEL.md), run by tests/panel_browser.rs against the
// real relay with mock upstreams. Env: ADMIN_URL, RELAY_URL, ADMIN_PASSWORD, BOB_KEY,
// EXPECT_REQUESTS, EXPECT_COST, CHROMIUM, SCREENSHOT_DIR. Exits non-zero on the first failure.
import { chromium } from 'playwright-core'
import { mkdirSync, readFileSync } from 'node:fs'
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import assert from 'node:assert/strict'

const env = (k) => {
  const v = process.env[k]
  if (!v) throw new Error(`${k} is not set`)
  return v
}
const ADMIN = env('ADMIN_URL')
const RELAY = env('RELAY_URL')
const PASSWORD = env('ADMIN_PASSWORD')
const BOB_KEY = env('BOB_KEY')
const SHOTS = env('SCREENSHOT_DIR')
mkdirSync(SHOTS, { recursive: true })

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
})
const pageErrors = []
async function context(opts = {}) {
  const ctx = await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 860 }, acceptDownloads: true, ...opts })
  // Generous: in CI the browser shares two cores with the rest of the test suite.
  ctx.setDefaultTimeout(20000)
  return ctx
}
async function page(ctx) {
  const p = await ctx.newPage()
  p.on('pageerror', (e) => pageErrors.push(`${p.url()}: ${e.message}`))
  p.on('console', (m) => {
    // 404s of endpoints this server does not have yet are expected; anything else is a bug.
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) pageErrors.push(`${p.url()}: console: ${m.text()}`)
  })
  return p
}
async function login(p, user = 'admin', pass = PASSWORD) {
  await p.fill('input[name=username]', user)
  await p.fill('input[name=password]', pass)
  await p.click('button[type=submit]')
}
// SPA navigations change the URL without a load event: poll the location instead.
const waitUrl = (pg, re) => pg.waitForFunction((src) => new RegExp(src).test(location.href), re.source)
const results = []
// SKIP=9,10 leaves journeys out (for running against a relay without the OAuth mock).
const skip = new Set((process.env.SKIP || '').split(',').filter(Boolean))
async function journey(name, fn) {
  if (skip.has(name.split(' ')[0])) return console.log(`skip ${name}`)
  const t0 = Date.now()
  try {
    await fn()
    results.push(`ok   ${name} (${Date.now() - t0} ms)`)
    console.log(`ok   ${name}`)
  } catch (e) {
    console.error(`FAIL ${name}: ${e.stack || e}`)
    await browser.close()
    process.exit(1)
  }
}
const adminApi = async (token, method, path, body) => {
  const r = await fetch(`${ADMIN}/admin/api${path}`, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: body && JSON.stringify(body) })
  return { status: r.status, json: await r.json().catch(() => null) }
}
const relayCall = (key, model = 'claude-haiku-4-5', headers = {}) =>
  fetch(`${RELAY}/v1/messages`, {
    method: 'POST',
    headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model, max_tokens: 16, messages: [{ role: 'user', content: 'hi' }] }),
  })
const money = (s) => Number(s.replace(/[^0-9.]/g, ''))

const ctx = await context()
const p = await page(ctx)
let carolKey = ''

await journey('1 login: wrong password, right password, reload, logout and Back', async () => {
  await p.goto(`${ADMIN}/ui/`)
  await waitUrl(p, /\/ui\/login/)
  await login(p, 'admin', 'wrong-password')
  await p.locator('[data-test=error]').waitFor()
  await login(p)
  await waitUrl(p, /\/ui\/overview/)
  await p.reload()
  await p.locator('[data-card=requests]').waitFor()
  assert.match(p.url(), /\/ui\/overview/)
  await p.click('[data-nav=keys]')
  await p.locator('[data-test=keys-table]').waitFor()
  await p.click('[data-test=logout]')
  await waitUrl(p, /\/ui\/login/)
  await p.goBack({ waitUntil: 'commit' })
  await waitUrl(p, /\/ui\/login/)
  await p.waitForTimeout(300)
  assert.equal(await p.locator('[data-test=keys-table]').count(), 0)
  await login(p)
  await waitUrl(p, /\/ui\/keys/)
})

if (skip.has('1')) {
  await p.goto(`${ADMIN}/ui/`)
  await login(p)
  await waitUrl(p, /\/ui\/overview/)
}

await journey('3 overview numbers: 50 requests, seeded $, 2 models, range switch', async () => {
  await p.goto(`${ADMIN}/ui/overview`)
  const req = p.locator('[data-card=requests] [data-value]')
  await req.filter({ hasText: process.env.EXPECT_REQUESTS || '50' }).waitFor()
  const cost = money(await p.locator('[data-card=cost] [data-value]').innerText())
  const want = Number(process.env.EXPECT_COST)
  assert.ok(Math.abs(cost - want) <= Math.max(0.00005, want * 0.01), `cost card ${cost} vs seeded ${want}`)
  await p.locator('canvas[data-chart=doughnut][data-labels="2"]').waitFor()
  const bars = p.locator('[data-test=chart-requests] canvas, canvas[data-chart=bar]').first()
  const chartsAvailable = (await p.locator('[data-unavailable]').count()) === 0
  if (chartsAvailable) {
    const before = await p.locator('canvas[data-chart=bar]').first().getAttribute('data-labels')
    await p.click('[data-range="7d"]')
    await p.waitForFunction((b) => document.querySelector('canvas[data-chart=bar]')?.dataset.labels !== b, before)
  } else {
    await bars.count()
    await p.click('[data-range="7d"]')
  }
  await p.click('[data-range="24h"]')
  // Instances and uptime; no infinite percentage when yesterday had nothing.
  await p.locator('[data-card=instances] [data-instances]', { hasText: /^1$/ }).waitFor()
  assert.match(await p.locator('[data-card=instances] [data-uptime]').innerText(), /^\d+(s|m \d+s|h \d+m|d \d+h)$/)
  const deltas = await p.locator('[data-delta]').allInnerTexts()
  assert.ok(deltas.length > 0 && deltas.every((d) => !d.includes('∞')), `deltas: ${deltas}`)
})

await journey('2 session expiry: revoked server-side, back to the same page after login', async () => {
  await p.goto(`${ADMIN}/ui/overview`)
  // The page's first loads finish before the session is revoked: one still in flight would meet
  // the 401 first and leave for the login page before the click below.
  await p.waitForLoadState('networkidle')
  const token = await p.evaluate(() => sessionStorage.getItem('relay.token'))
  assert.ok(token)
  assert.equal(await p.evaluate(() => localStorage.getItem('relay.token')), null)
  const r = await fetch(`${ADMIN}/admin/api/logout`, { method: 'POST', headers: { authorization: `Bearer ${token}` } })
  assert.ok(r.ok)
  await p.click('[data-nav=keys]')
  await waitUrl(p, /\/ui\/login\?.*expired=1/)
  await p.locator('[data-test=expired]').waitFor()
  await login(p)
  await waitUrl(p, /\/ui\/keys/)
})

await journey('5 create key: every limit, plaintext shown once with snippet, then only the hint', async () => {
  await p.goto(`${ADMIN}/ui/keys`)
  await p.click('[data-test=new-key]')
  await p.fill('[data-test=key-form] input[name=name]', 'carol')
  await p.fill('input[name=daily_usd]', '5')
  await p.fill('input[name=window_minutes]', '60')
  await p.fill('input[name=window_requests]', '60')
  await p.selectOption('select[name=expiry]', 'at')
  await p.fill('input[name=expires_at]', '2031-01-01T00:00')
  const tags = p.locator('[data-test=key-form] [data-test=tags]')
  await tags.fill('team-a, 批处理')
  await tags.blur()
  await p.click('[data-test=submit]')
  const plain = await p.locator('[data-test=plaintext]').innerText()
  assert.match(plain, /^cr_[0-9a-f]{64}$/)
  carolKey = plain
  assert.ok((await p.locator('[data-test=snippet]').innerText()).includes(plain))
  // The relay's own address (from /me), not a guess on port 3000.
  await p.waitForFunction((r) => document.querySelector('[data-test=snippet]')?.innerText.includes(`ANTHROPIC_BASE_URL=${r}/api`), RELAY)
  await p.click('[data-test=done]')
  const row = p.locator('tr[data-key=carol]')
  await row.waitFor()
  assert.ok(!(await p.content()).includes(plain), 'plaintext still on the page')
  await p.reload()
  await row.waitFor()
  assert.ok(!(await p.content()).includes(plain), 'plaintext on the page after reload')
  const created = await adminApi(await p.evaluate(() => sessionStorage.getItem('relay.token')), 'GET', '/keys')
  const carol = created.json.keys.find((k) => k.name === 'carol')
  assert.equal(carol.cost_limits.daily_usd, 5)
  assert.equal(carol.rate_limit.requests, 60)
  assert.equal(carol.rate_limit.window_minutes, 60)
  assert.match(carol.expires_at, /^2031-01-01/)
  assert.deepEqual(carol.tags, ['team-a', '批处理'])
  assert.equal((await relayCall(carolKey)).status, 200)
  // A tag in the row filters the list by it (on the server); clearing the filter shows all again.
  await row.locator('[data-test=tag]', { hasText: '批处理' }).click()
  await p.waitForFunction(() => document.querySelectorAll('[data-test=keys-table] tbody tr[data-key]').length === 1)
  assert.equal(await p.locator('[data-test=tag-filter]').inputValue(), '批处理')
  await p.locator('[data-test=tag-filter]').fill('')
  await p.locator('[data-test=tag-filter]').press('Enter')
  await p.locator('tr[data-key=alice]').waitFor()
})

await journey('6 disable: the key shows Disabled and the relay answers 401', async () => {
  const row = p.locator('tr[data-key=carol]')
  await row.locator('[data-test=toggle]').click()
  await row.locator('[data-test=status]', { hasText: 'Disabled' }).waitFor()
  assert.equal((await relayCall(carolKey)).status, 401)
})

await journey('7 config items: lock, edit and delete disabled with a tooltip naming relay.yaml', async () => {
  const row = p.locator('tr[data-key=alice]')
  await row.locator('[data-test=locked]').waitFor()
  assert.ok(await row.locator('[data-test=toggle]').isDisabled())
  assert.ok(await row.locator('[data-test=delete]').isDisabled())
  assert.match(await row.locator('[data-test=locked]').getAttribute('title'), /relay\.yaml/)
  await p.goto(`${ADMIN}/ui/accounts`)
  const acc = p.locator('tr[data-account=main]')
  await acc.locator('[data-test=locked]').waitFor()
  assert.ok(await acc.locator('[data-test=delete]').isDisabled())
  assert.match(await acc.locator('[data-test=locked]').getAttribute('title'), /relay\.yaml/)
})

await journey('7b bulk actions: select all but config keys, disable, enable, delete with confirm', async () => {
  const token = await p.evaluate(() => sessionStorage.getItem('relay.token'))
  const made = await adminApi(token, 'POST', '/keys/batch', { create: { count: 2, name_prefix: 'bulk' } })
  assert.equal(made.status, 200)
  await p.goto(`${ADMIN}/ui/keys`)
  await p.locator('tr[data-key=bulk2]').waitFor()
  assert.ok(await p.locator('tr[data-key=alice] [data-test=select]').isDisabled(), 'a relay.yaml key is selectable')
  await p.click('[data-test=select-all]')
  const n = await p.locator('[data-test=select]:checked').count()
  assert.ok(n >= 3, `selected ${n}`)
  assert.equal(await p.locator('tr[data-key=alice] [data-test=select]').isChecked(), false)
  await p.locator('[data-test=bulk-count]', { hasText: String(n) }).waitFor()
  await p.click('[data-test=bulk-disable]')
  await p.locator('[role=status]', { hasText: `${n} succeeded, 0 failed` }).waitFor()
  await p.locator('tr[data-key=bulk1] [data-test=status]', { hasText: 'Disabled' }).waitFor()
  await p.locator('tr[data-key=bob] [data-test=status]', { hasText: 'Disabled' }).waitFor()
  assert.equal(await p.locator('[data-test=bulk-bar]').count(), 0, 'selection kept after success')
  await p.click('[data-test=select-all]')
  await p.click('[data-test=bulk-enable]')
  await p.locator('tr[data-key=bob] [data-test=status]', { hasText: 'Active' }).waitFor()
  await p.locator('tr[data-key=bulk2] [data-test=status]', { hasText: 'Active' }).waitFor()
  // The server refuses a relay.yaml key in a batch; the page reports it.
  const refused = await adminApi(token, 'POST', '/keys/batch', { ids: ['config.alice'], delete: true })
  assert.equal(refused.json.results[0].ok, false)
  await p.locator('tr[data-key=bulk1] [data-test=select]').check()
  await p.locator('tr[data-key=bulk2] [data-test=select]').check()
  let asked = ''
  p.once('dialog', (d) => { asked = d.message(); d.accept() })
  await p.click('[data-test=bulk-delete]')
  await p.locator('[role=status]', { hasText: '2 succeeded, 0 failed' }).waitFor()
  assert.match(asked, /2 keys/)
  await p.locator('tr[data-key=bulk1]').waitFor({ state: 'detached' })
  assert.equal(await p.locator('tr[data-key=bulk2]').count(), 0)
  assert.equal(await p.locator('tr[data-key=alice]').count(), 1)
})

await journey('7c key detail: usage chart, per-model table, recent requests, limit state', async () => {
  await p.goto(`${ADMIN}/ui/keys`)
  await p.locator('tr[data-key=alice] [data-test=open-detail]').click()
  const d = p.locator('[data-test=key-detail]')
  await d.locator('[data-test=detail-usage] canvas').waitFor()
  await d.locator('[data-tab=models]').click()
  await d.locator('[data-test=detail-models] tr[data-model]').first().waitFor()
  const models = await d.locator('[data-test=detail-models] tr[data-model]').count()
  assert.equal(models, 2, 'alice used both seeded models')
  const reqs = await d.locator('[data-test=detail-models] [data-requests]').allInnerTexts()
  assert.equal(reqs.reduce((n, r) => n + Number(r.replace(/[^0-9]/g, '')), 0), 25, `per-model requests ${reqs}`)
  await d.locator('[data-tab=recent]').click()
  await d.locator('[data-test=detail-recent] tr[data-recent]').first().waitFor()
  await d.locator('[data-tab=limits]').click()
  await d.locator('[data-test=limit-bars]').waitFor()
  await p.goto(`${ADMIN}/ui/keys`)
})

await journey('8 console account: bad URL inline error, valid one active with a masked key', async () => {
  await p.goto(`${ADMIN}/ui/accounts`)
  await p.click('[data-test=new-account]')
  const w = p.locator('[data-test=account-wizard]')
  await w.locator('input[name=name]').fill('extra')
  await w.locator('summary').click()
  await w.locator('input[name=base_url]').fill('not a url')
  await w.locator('input[name=api_key]').fill('sk-ant-api03-secretsecret-abcd')
  await w.locator('[data-test=create-account]').click()
  await w.locator('[data-test=wizard-error]').waitFor()
  await w.locator('input[name=base_url]').fill(process.env.MOCK_URL)
  await w.locator('[data-test=create-account]').click()
  const row = p.locator('tr[data-account=extra]')
  await row.waitFor()
  assert.equal(await w.count(), 0, 'wizard closed after success')
  await row.locator('[data-test=health]', { hasText: 'Active' }).waitFor()
  const cred = await row.locator('[data-test=credential]').innerText()
  assert.ok(!cred.includes('secretsecret'), `credential not masked: ${cred}`)
  assert.match(cred, /^sk-.*abcd/)
})

await journey('9 OAuth wizard: URL shown; bad code inline and open; callback URL creates it', async () => {
  await p.click('[data-test=new-account]')
  const w = p.locator('[data-test=account-wizard]')
  await w.locator('select[name=kind]').selectOption('claude-oauth')
  await w.locator('input[name=name]').fill('subscription')
  await w.locator('[data-test=authorize]').click()
  const url = await w.locator('[data-test=auth-url]').getAttribute('href')
  assert.match(url, /^http/)
  await w.locator('input[name=code]').fill('not-a-valid-code')
  await w.locator('[data-test=exchange]').click()
  await w.locator('[data-test=wizard-error]').waitFor()
  // The mock's sign-in page redirects to the callback with a real code.
  const signIn = await fetch(url, { redirect: 'manual' })
  const callback = signIn.headers.get('location')
  assert.ok(callback && callback.includes('code='), `no callback from the sign-in page: ${signIn.status}`)
  await w.locator('input[name=code]').fill(callback)
  await w.locator('[data-test=exchange]').click()
  await p.locator('tr[data-account=subscription]').waitFor()
})

await journey('10 import: claudeAiOauth JSON creates the account with its expiry', async () => {
  await p.click('[data-test=new-account]')
  const w = p.locator('[data-test=account-wizard]')
  await w.locator('select[name=kind]').selectOption('claude-oauth')
  await w.locator('input[name=name]').fill('imported')
  await w.locator('[data-test=mode-import]').click()
  await w.locator('textarea[name=import]').fill('{ not json')
  await w.locator('[data-test=do-import]').click()
  await w.locator('[data-test=wizard-error]').waitFor()
  const expiresAt = Date.now() + 5 * 3600 * 1000
  await w.locator('textarea[name=import]').fill(JSON.stringify({ claudeAiOauth: { accessToken: 'sk-ant-oat01-imported-access-token', refreshToken: 'sk-ant-ort01-imported-refresh', expiresAt, scopes: ['user:inference', 'user:profile'] } }))
  await w.locator('[data-test=do-import]').click()
  const row = p.locator('tr[data-account=imported]')
  await row.waitFor()
  assert.ok((await row.innerText()).includes('expires'))
})

// The seeding made account `main` answer one request with 529 (served by `backup` instead).
await journey('11 health: an upstream 529 shows cooling down with reason and countdown; Reset clears it', async () => {
  await p.goto(`${ADMIN}/ui/accounts`)
  const row = p.locator('tr[data-account=main]')
  await row.locator('[data-test=health]', { hasText: 'Cooling down' }).waitFor()
  assert.match(await row.locator('[data-test=reason]').innerText(), /529/)
  await row.locator('[data-test=countdown]').waitFor()
  await row.locator('[data-test=reset]').click()
  await row.locator('[data-test=health]', { hasText: 'Active' }).waitFor()
})

// After 11: `main` saw a 529 and a reset; `extra` (journey 8) answers from the plain mock.
await journey('17 account actions: a test streams the reply; edit keeps its drawer on errors and saves; health history lists the 529', async () => {
  await p.goto(`${ADMIN}/ui/accounts`)
  const row = p.locator('tr[data-account=extra]')
  await row.locator('[data-test=test]').click()
  const test = p.locator('[data-test=account-test]')
  await test.locator('input[name=test-model]').fill('claude-sonnet-4-5')
  await test.locator('[data-test=run-test]').click()
  await test.locator('[data-test=test-done]').waitFor()
  assert.match(await test.locator('[data-test=test-status]').innerText(), /^HTTP 200 · TTFB \d+ ms$/)
  assert.equal(await test.locator('[data-test=test-reply]').innerText(), 'Hello from mock upstream!')
  assert.match(await test.locator('[data-test=test-done]').innerText(), /^✓/)
  assert.equal(await test.locator('[data-test=test-error]').count(), 0)
  await p.getByRole('dialog').getByRole('button', { name: 'Close' }).click()

  await row.locator('[data-test=edit]').click()
  const edit = p.locator('[data-test=account-edit]')
  assert.equal(await edit.locator('input[name=api_key]').inputValue(), '', 'secrets are never prefilled')
  await edit.locator('input[name=proxy]').fill('ftp://nowhere:21')
  await edit.locator('[data-test=save-account]').click()
  const err = edit.locator('[data-test=edit-error]')
  await err.waitFor()
  assert.match(await err.innerText(), /proxy/)
  assert.equal(await edit.count(), 1, 'the drawer stays open after a refusal')
  await edit.locator('input[name=proxy]').fill('')
  await edit.locator('input[name=priority]').fill('17')
  await edit.locator('[data-test=save-account]').click()
  await edit.waitFor({ state: 'detached' })
  await p.waitForFunction(() => /^17/.test(document.querySelector('tr[data-account=extra] [data-test=priority]')?.textContent.trim() || ''))

  await p.locator('tr[data-account=main] [data-test=details]').click()
  const detail = p.locator('[data-test=account-detail]')
  await detail.locator('[data-test=tab-usage]').waitFor()
  await detail.locator('[data-test=tab-health]').click()
  const events = detail.locator('[data-test=events]')
  await events.waitFor()
  const text = await events.innerText()
  assert.match(text, /Cooling down/)
  assert.match(text, /529/)
  await p.getByRole('dialog').getByRole('button', { name: 'Close' }).click()
})

await journey('12 explorer: the table matches the API and the CSV matches the table', async () => {
  await p.goto(`${ADMIN}/ui/usage`)
  await p.locator('[data-test=usage-table] tfoot th').nth(1).waitFor()
  const subjects = await p.locator('[data-test=usage-table] thead th').allInnerTexts()
  assert.ok(subjects.includes('alice'), `subjects: ${subjects}`)
  const col = subjects.indexOf('alice')
  await p.locator('[data-test=usage-table] tfoot th').nth(col).filter({ hasText: /\d/ }).waitFor()
  const total = Number((await p.locator('[data-test=usage-table] tfoot th').nth(col).innerText()).replace(/[^0-9]/g, ''))
  assert.equal(total, 25, 'alice sent 25 requests')
  const [dl] = await Promise.all([p.waitForEvent('download'), p.click('[data-test=csv]')])
  const csv = readFileSync(await dl.path(), 'utf8').trim().split('\n')
  assert.deepEqual(csv[0].split(',').slice(1), subjects.slice(1))
  const sum = csv.slice(1).reduce((n, l) => n + Number(l.split(',')[col]), 0)
  assert.equal(sum, 25)
  // The server's CSV of the same parameters: per subject, its rows and their sum match the table.
  const ids = await p.locator('[data-test=usage-table] thead th[data-id]').evaluateAll((ths) => ths.map((t) => t.dataset.id))
  const tableRows = await p.locator('[data-test=usage-table] tbody tr').count()
  const totals = await p.locator('[data-test=usage-table] tfoot tr').first().locator('th').allInnerTexts()
  const [sdl] = await Promise.all([p.waitForEvent('download'), p.click('[data-test=csv-server]')])
  const server = readFileSync(await sdl.path(), 'utf8').trim().split('\n').map((l) => l.split(','))
  const si = server[0].indexOf('subject')
  const ri = server[0].indexOf('requests')
  ids.forEach((id, i) => {
    const rows = server.slice(1).filter((r) => r[si] === id)
    assert.equal(rows.length, tableRows, `server CSV rows of ${id}`)
    assert.equal(rows.reduce((n, r) => n + Number(r[ri]), 0), Number(totals[i + 1].replace(/[^0-9]/g, '')), `server CSV sum of ${id}`)
  })
  // A time zone is sent: day buckets start at its midnight, and the totals stay.
  await p.selectOption('select[name=granularity]', 'day')
  await p.waitForFunction(() => document.querySelectorAll('[data-test=usage-table] tbody tr').length <= 2)
  await p.selectOption('select[name=tz]', 'Pacific/Kiritimati')
  await p.locator('[data-test=usage-table] tfoot th').nth(col).filter({ hasText: /^25$/ }).waitFor()
  const [zdl] = await Promise.all([p.waitForEvent('download'), p.click('[data-test=csv-server]')])
  const zoned = readFileSync(await zdl.path(), 'utf8').trim().split('\n')
  assert.match(zoned[1].split(',')[0], /T00:00:00\+14:00$/, `zoned CSV: ${zoned[1]}`)
  // The previous period beside the current one.
  await p.check('input[name=compare]')
  await p.locator('[data-test=usage-table] [data-test=previous] td').nth(col - 1).filter({ hasText: /^0$/ }).waitFor()
  assert.equal(await p.locator('[data-test=usage-table] [data-test=change] td').nth(col - 1).innerText(), 'new')
  await p.uncheck('input[name=compare]')
  await p.selectOption('select[name=tz]', 'UTC')
})

await journey('13 live: shows the numbers or a clear not-available state', async () => {
  await p.goto(`${ADMIN}/ui/live`)
  await p.locator('[data-unavailable], [data-card=in_flight]').first().waitFor()
})

await journey('14 /stats: own numbers or not-available; bad key refused; key never in URL or localStorage', async () => {
  const sctx = await context()
  const s = await page(sctx)
  await s.goto(`${RELAY}/stats`)
  const unavailable = (await s.locator('[data-unavailable]').count()) > 0
  if (!unavailable) {
    await s.fill('input[name=key]', 'cr_' + '0'.repeat(64))
    await s.click('button[type=submit]')
    await s.locator('[data-test=error], [data-unavailable]').first().waitFor()
    const endpointMissing = (await s.locator('[data-unavailable]').count()) > 0
    if (!endpointMissing) {
      await s.fill('input[name=key]', BOB_KEY)
      await s.click('button[type=submit]')
      await s.locator('[data-test=key-name]', { hasText: 'bob' }).waitFor()
      await s.locator('[data-period=d30] [data-requests]', { hasText: '25' }).waitFor()
    } else {
      console.log('     (/api/v1/key/usage is not on this server: not-available state checked)')
    }
  }
  assert.ok(!s.url().includes(BOB_KEY))
  const stored = await s.evaluate(() => JSON.stringify(localStorage))
  assert.ok(!stored.includes('cr_'), 'a key in localStorage')
  await sctx.close()
})

await journey('15 i18n: zh-CN browser gets Chinese; English switch persists; key sets equal', async () => {
  const zctx = await context({ locale: 'zh-CN' })
  const z = await page(zctx)
  await z.goto(`${ADMIN}/ui/`)
  await z.locator('button[type=submit]', { hasText: '登录' }).waitFor()
  await login(z)
  await z.locator('[data-nav=overview]', { hasText: '概览' }).waitFor()
  await z.selectOption('[data-test=lang]', 'en')
  await z.locator('[data-nav=overview]', { hasText: 'Overview' }).waitFor()
  await z.reload()
  await z.locator('[data-nav=keys]', { hasText: 'API keys' }).waitFor()
  await zctx.close()
  execFileSync('node', [new URL('../scripts/check-i18n.mjs', import.meta.url).pathname], { stdio: 'inherit' })
})

await journey('16 dark mode: class, chart colours, persistence, system follows the OS', async () => {
  await p.goto(`${ADMIN}/ui/overview`)
  await p.locator('canvas[data-chart=doughnut]').waitFor()
  const colour = () => p.evaluate(() => getComputedStyle(document.documentElement).getPropertyValue('--c1').trim())
  await p.click('[data-theme=light]')
  const light = await colour()
  await p.click('[data-theme=dark]')
  assert.ok(await p.evaluate(() => document.documentElement.classList.contains('dark')))
  assert.notEqual(await colour(), light)
  await p.reload()
  assert.ok(await p.evaluate(() => document.documentElement.classList.contains('dark')))
  await p.click('[data-theme=system]')
  await p.emulateMedia({ colorScheme: 'dark' })
  await p.waitForFunction(() => document.documentElement.classList.contains('dark'))
  await p.emulateMedia({ colorScheme: 'light' })
  await p.waitForFunction(() => !document.documentElement.classList.contains('dark'))
})

await journey('18 users and roles: admin adds an operator; she sees no users or audit; a role change signs her out; the audit shows the diff', async () => {
  // A reload where the page is set up before `/me` answers still lists the users.
  const slowMe = async (route) => { await new Promise((r) => setTimeout(r, 400)); await route.continue() }
  await p.route('**/admin/api/me', slowMe)
  await p.goto(`${ADMIN}/ui/settings`)
  await p.locator('[data-test=users-table] [data-user=admin]').waitFor()
  await p.unroute('**/admin/api/me', slowMe)
  await p.fill('input[name=new_username]', 'olga')
  await p.fill('input[name=new_user_password]', 'short')
  await p.selectOption('select[name=new_role]', 'operator')
  await p.click('[data-test=new-user] button[type=submit]')
  await p.locator('[data-test=new-user-error]').waitFor()
  assert.match(await p.textContent('[data-test=new-user-error]'), /10/)
  await p.fill('input[name=new_user_password]', 'olga-password-1')
  await p.click('[data-test=new-user] button[type=submit]')
  await p.locator('[data-test=users-table] [data-user=olga]').waitFor()
  assert.equal(await p.inputValue('[data-user=olga] select[data-test=role]'), 'operator')
  // The operator's own view: no Audit entry, no Users section, their own sessions only.
  const octx = await context()
  const o = await page(octx)
  await o.goto(`${ADMIN}/ui/`)
  await login(o, 'olga', 'olga-password-1')
  await waitUrl(o, /overview/)
  await o.locator('[data-test=whoami]').waitFor()
  assert.match(await o.textContent('[data-test=whoami]'), /olga · Operator/)
  assert.equal(await o.locator('[data-nav=audit]').count(), 0)
  assert.equal(await o.locator('[data-nav=settings]').count(), 1)
  await o.click('[data-nav=settings]')
  await o.locator('[data-test=my-role]').waitFor()
  assert.equal(await o.textContent('[data-test=my-role]'), 'Operator')
  assert.equal(await o.locator('[data-test=users]').count(), 0)
  await o.locator('[data-test=sessions] [data-session=olga]').first().waitFor()
  assert.equal(await o.locator('[data-test=sessions] [data-session=admin]').count(), 0)
  await o.fill('input[name=current_password]', 'not-my-password')
  await o.fill('input[name=new_password]', 'olga-password-2')
  await o.click('[data-test=password-form] button[type=submit]')
  await o.locator('[data-test=password-error]').waitFor()
  // The server refuses what the role may not do, whatever the page offers.
  const otk = await o.evaluate(() => sessionStorage.getItem('relay.token'))
  assert.equal((await adminApi(otk, 'GET', '/users')).status, 403)
  assert.equal((await adminApi(otk, 'GET', '/audit')).status, 403)
  // An admin makes olga a viewer: her session ends, and the next page sends her to the login.
  await p.selectOption('[data-user=olga] select[data-test=role]', 'viewer')
  await p.waitForFunction(() => document.querySelector('[data-user=olga] select[data-test=role]')?.value === 'viewer')
  await o.click('[data-nav=keys]')
  await waitUrl(o, /login/)
  await octx.close()
  // The audit page lists the changes with their diffs.
  await p.click('[data-nav=audit]')
  await p.locator('[data-test=audit-table]').waitFor()
  await p.fill('input[name=target]', 'olga')
  await p.click('[data-test=audit-apply]')
  await p.locator('[data-audit="user.update"]').first().waitFor()
  await p.locator('[data-audit="user.update"]').first().click()
  await p.locator('[data-test=audit-detail] [data-change=role]').waitFor()
  assert.match(await p.textContent('[data-test=audit-detail] [data-change=role]'), /operator\s*viewer/)
  await p.locator('[data-audit="user.create"]').waitFor()
  const text = await p.textContent('[data-test=audit-table]')
  assert.ok(!text.includes('olga-password-1'), 'a password in the audit page')
})

await journey('19 settings: a display currency shows beside USD on the overview; back to USD', async () => {
  await p.goto(`${ADMIN}/ui/settings`)
  await p.locator('[data-test=panel-settings]').waitFor()
  await p.fill('input[name=currency]', 'CNY')
  await p.fill('input[name=rates]', 'EUR=0.92')
  await p.click('[data-test=save-settings]')
  await p.locator('[data-test=settings-error]').waitFor()
  assert.match(await p.textContent('[data-test=settings-error]'), /CNY/)
  await p.fill('input[name=rates]', 'CNY=7.1, EUR=0.92')
  await p.fill('input[name=public_base_url]', 'https://relay.example.com')
  await p.click('[data-test=save-settings]')
  await p.locator('[data-test=reset-currency]').waitFor()
  await p.click('[data-nav=overview]')
  const cost = p.locator('[data-card=cost] [data-value]')
  await p.waitForFunction(() => /CN¥|¥/.test(document.querySelector('[data-card=cost] [data-value]')?.textContent || ''))
  const shown = await cost.textContent()
  const [usdPart, cnyPart] = shown.split('(')
  const usdValue = money(usdPart)
  const cnyValue = money(cnyPart)
  assert.ok(Math.abs(cnyValue - usdValue * 7.1) <= 0.01 + usdValue * 0.001, `${shown}`)
  const tk = await p.evaluate(() => sessionStorage.getItem('relay.token'))
  const me = await adminApi(tk, 'GET', '/me')
  assert.deepEqual(me.json.currency, { code: 'CNY', rate: 7.1 })
  assert.equal(me.json.public_base_url, 'https://relay.example.com')
  await p.click('[data-nav=settings]')
  await p.click('[data-test=reset-currency]')
  await p.locator('[data-test=reset-currency]').waitFor({ state: 'detached' })
  assert.equal((await adminApi(tk, 'PATCH', '/settings', { public_base_url: null })).status, 200)
  assert.deepEqual((await adminApi(tk, 'GET', '/me')).json.currency, { code: 'USD', rate: 1 })
})

await journey('20 system: version, store health, the configuration file; a backup downloads and restores; CRS errors are shown', async () => {
  await p.click('[data-nav=system]')
  await p.locator('[data-test=system]').waitFor()
  const tk = await p.evaluate(() => sessionStorage.getItem('relay.token'))
  const sys = (await adminApi(tk, 'GET', '/system')).json
  assert.equal(await p.textContent('[data-test=version]'), sys.version)
  assert.equal(await p.textContent('[data-test=backend]'), sys.store.backend)
  assert.equal(await p.textContent('[data-test=config-file]'), sys.config_file)
  assert.match(await p.textContent('[data-test=store-health]'), /Reachable/)
  // A backup downloads as a file that the import endpoint accepts back (merge into this store).
  await p.fill('input[name=backup_passphrase]', 'a passphrase for the test')
  const [download] = await Promise.all([p.waitForEvent('download'), p.click('[data-test=download-backup]')])
  const file = await download.path()
  const doc = JSON.parse(readFileSync(file, 'utf8'))
  assert.equal(doc.format, 'claude-relay-backup')
  await p.setInputFiles('input[name=backup_file]', file)
  await p.fill('input[name=import_passphrase]', 'a wrong passphrase')
  await p.selectOption('select[name=import_mode]', 'merge')
  await p.click('[data-test=restore-backup]')
  await p.locator('[data-test=backup-error]').waitFor()
  await p.fill('input[name=import_passphrase]', 'a passphrase for the test')
  await p.click('[data-test=restore-backup]')
  await p.locator('[data-test=restore-result]').waitFor()
  assert.match(await p.textContent('[data-test=restore-result]'), /Restored \d+ keys/)
  // The CRS import reports an unreachable Redis clearly.
  await p.fill('input[name=crs_redis]', 'redis://127.0.0.1:1/0')
  await p.fill('input[name=crs_key]', 'some-key')
  await p.click('[data-test=crs-run]')
  await p.locator('[data-test=crs-error]').waitFor()
})

await journey('21 request log: a relayed request appears with its key, model and status; a filter and the detail drawer', async () => {
  const r = await relayCall(BOB_KEY, 'claude-haiku-4-5', { 'x-request-id': 'journey-21-request' })
  assert.equal(r.status, 200)
  await p.click('[data-nav=requests]')
  await p.locator('[data-test=requests-table]').waitFor()
  // The log is written in batches: apply the filter until the request shows.
  await p.fill('input[name=model]', 'claude-haiku-4-5')
  for (let i = 0; i < 20 && !(await p.locator('[data-request=journey-21-request]').count()); i++) {
    await p.click('[data-test=requests-apply]')
    await p.waitForTimeout(500)
  }
  const row = p.locator('[data-request=journey-21-request]')
  await row.waitFor()
  assert.equal((await row.locator('[data-status]').textContent()).trim(), '200')
  await row.click()
  await p.locator('[data-test=request-detail] [data-field=key_name]').waitFor()
  assert.match(await p.textContent('[data-test=request-detail] [data-field=key_name]'), /bob/)
  const detail = await p.textContent('[data-test=request-detail]')
  assert.ok(!detail.includes(BOB_KEY), 'the key in the request log')
  await p.keyboard.press('Escape')
  await p.goto(`${ADMIN}/ui/requests`)
  await p.fill('input[name=status]', '5xx')
  await p.click('[data-test=requests-apply]')
  await p.waitForTimeout(300)
  assert.equal(await p.locator('[data-request=journey-21-request]').count(), 0)
})

await journey('screenshots: every page in both themes, and the phone layout', async () => {
  for (const theme of ['light', 'dark']) {
    await p.click(`[data-theme=${theme}]`)
    for (const name of ['overview', 'keys', 'accounts', 'groups', 'usage', 'live', 'requests', 'settings', 'audit', 'system']) {
      await p.goto(`${ADMIN}/ui/${name}`)
      await p.locator('main h1').waitFor()
      await p.waitForTimeout(400)
      await p.screenshot({ path: join(SHOTS, `${name}-${theme}.png`), fullPage: true })
    }
  }
  const phone = await context({ viewport: { width: 360, height: 740 } })
  const m = await page(phone)
  await m.goto(`${ADMIN}/ui/`)
  await login(m)
  await waitUrl(m, /overview/)
  await m.click('[data-test=menu]')
  await m.locator('[data-nav=keys]').click()
  await waitUrl(m, /keys/)
  await m.locator('[data-test=keys-table]').waitFor()
  await m.waitForTimeout(400)
  assert.ok(await m.evaluate(() => document.documentElement.scrollWidth <= 360 + 1), 'the page is wider than a phone')
  await m.screenshot({ path: join(SHOTS, 'keys-phone.png'), fullPage: true })
  await m.goto(`${RELAY}/stats`)
  await m.screenshot({ path: join(SHOTS, 'stats-phone.png') })
  await phone.close()
  await p.goto(`${RELAY}/stats`)
  await p.screenshot({ path: join(SHOTS, 'stats.png') })
})

await browser.close()
if (pageErrors.length) {
  console.error('FAIL page errors:\n' + pageErrors.join('\n'))
  process.exit(1)
}
console.log(results.join('\n'))
console.log(`screenshots in ${SHOTS}`)
