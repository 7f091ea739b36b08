// Time ranges of the charts: [from, to) in Unix seconds and the bucket size that suits them.
export const RANGES = { '24h': [86400, 'hour'], '7d': [7 * 86400, 'hour'], '30d': [30 * 86400, 'day'] }
export function rangeOf(name, custom) {
  const now = Math.floor(Date.now() / 1000)
  if (name === 'custom' && custom?.from && custom?.to) {
    const from = Math.floor(new Date(custom.from).getTime() / 1000)
    const to = Math.floor(new Date(custom.to).getTime() / 1000) + 86400
    return { from, to, granularity: to - from > 7 * 86400 ? 'day' : 'hour' }
  }
  const [span, granularity] = RANGES[name] || RANGES['24h']
  return { from: now - span, to: now, granularity: name === '7d' ? 'day' : granularity }
}
