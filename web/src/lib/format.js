import { i18n } from './i18n.js'
import { me } from './me.js'

const loc = () => i18n.global.locale.value
export const num = (n) => new Intl.NumberFormat(loc()).format(n ?? 0)
export const compact = (n) => new Intl.NumberFormat(loc(), { notation: 'compact', maximumFractionDigits: 1 }).format(n ?? 0)
const inUsd = (n) =>
  new Intl.NumberFormat(loc(), { style: 'currency', currency: 'USD', minimumFractionDigits: 2, maximumFractionDigits: n && Math.abs(n) < 1 ? 4 : 2 }).format(n ?? 0)
/** A USD amount, followed by the display currency's when one is set (`/me`'s `currency`). */
export const usd = (n) => {
  const c = me.value?.currency
  if (!c || c.code === 'USD') return inUsd(n)
  const other = new Intl.NumberFormat(loc(), { style: 'currency', currency: c.code, maximumFractionDigits: 2 }).format((n ?? 0) * c.rate)
  return `${inUsd(n)} (${other})`
}
export function offset(d = new Date()) {
  const m = -d.getTimezoneOffset()
  const s = m >= 0 ? '+' : '-'
  const a = Math.abs(m)
  return `UTC${s}${String(Math.floor(a / 60)).padStart(2, '0')}:${String(a % 60).padStart(2, '0')}`
}
/** Local time with its UTC offset. */
export function time(unixSeconds) {
  if (unixSeconds == null) return '—'
  const d = new Date(unixSeconds * 1000)
  return `${new Intl.DateTimeFormat(loc(), { dateStyle: 'short', timeStyle: 'short' }).format(d)} (${offset(d)})`
}
/** A bucket's label; days in `tz` (default UTC, as the server buckets them without `tz`), times in `tz` or local. */
export function bucketLabel(unixSeconds, granularity, tz) {
  const d = new Date(unixSeconds * 1000)
  if (granularity === 'day' || granularity === 'month')
    return new Intl.DateTimeFormat(loc(), { month: 'short', day: 'numeric', timeZone: tz || 'UTC' }).format(d)
  return new Intl.DateTimeFormat(loc(), { hour: '2-digit', minute: '2-digit', timeZone: tz || undefined }).format(d)
}
export function countdown(untilMs, now = Date.now()) {
  if (!untilMs) return ''
  let s = Math.max(0, Math.round((untilMs - now) / 1000))
  const h = Math.floor(s / 3600)
  s -= h * 3600
  const m = Math.floor(s / 60)
  s -= m * 60
  return h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`
}
export const tokens = (c) =>
  (c?.input_tokens ?? 0) + (c?.output_tokens ?? 0) + (c?.cache_read_tokens ?? 0) + (c?.cache_write_5m_tokens ?? 0) + (c?.cache_write_1h_tokens ?? 0)
/** A length of time in seconds, in its two largest units (`3d 4h`, `2h 5m`, `42s`). */
export function duration(s) {
  s = Math.max(0, Math.floor(s ?? 0))
  const d = Math.floor(s / 86400)
  const h = Math.floor((s % 86400) / 3600)
  const m = Math.floor((s % 3600) / 60)
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`
}
