// Fails when the locale files do not have exactly the same keys.
import { readFileSync } from 'node:fs'
const dir = new URL('../src/locales/', import.meta.url)
const flat = (o, p = '') =>
  Object.entries(o).flatMap(([k, v]) => (v && typeof v === 'object' ? flat(v, p + k + '.') : [p + k]))
const load = (f) => new Set(flat(JSON.parse(readFileSync(new URL(f, dir), 'utf8'))))
const zh = load('zh-CN.json')
const en = load('en.json')
const onlyZh = [...zh].filter((k) => !en.has(k))
const onlyEn = [...en].filter((k) => !zh.has(k))
if (onlyZh.length || onlyEn.length) {
  if (onlyZh.length) console.error('only in zh-CN.json:', onlyZh.join(', '))
  if (onlyEn.length) console.error('only in en.json:', onlyEn.join(', '))
  process.exit(1)
}
console.log(`check-i18n: ${en.size} keys, identical in en and zh-CN`)
