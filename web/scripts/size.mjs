// Reports the gzip size of the first load (index.html's own scripts and styles) and of everything,
// and fails above the budgets: 150 KB first load, 400 KB in total.
import { readFileSync, readdirSync, statSync } from 'node:fs'
import { gzipSync } from 'node:zlib'
import { join } from 'node:path'
const dist = new URL('../dist/', import.meta.url).pathname
const gz = (f) => gzipSync(readFileSync(f), { level: 9 }).length
const walk = (d) => readdirSync(d).flatMap((n) => (statSync(join(d, n)).isDirectory() ? walk(join(d, n)) : [join(d, n)]))
const report = (html, root) => {
  const text = readFileSync(join(dist, html), 'utf8')
  const refs = [...text.matchAll(/(?:src|href)="\/(?:ui|stats)\/([^"]+)"/g)].map((m) => m[1])
  return refs.reduce((n, r) => n + gz(join(root, r)), gz(join(dist, html)))
}
const first = report('index.html', dist)
const stats = report('stats/stats.html', join(dist, 'stats'))
const all = walk(dist).filter((f) => /\.(js|css|html)$/.test(f)).reduce((n, f) => n + gz(f), 0)
const kb = (n) => (n / 1024).toFixed(1) + ' KB'
console.log(`size: admin first load ${kb(first)} gzip, /stats first load ${kb(stats)} gzip, all ${kb(all)} gzip`)
if (first > 150 * 1024 || all > 400 * 1024) {
  console.error('size: over budget (150 KB first load, 400 KB total)')
  process.exit(1)
}
