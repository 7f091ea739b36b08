import { ref } from 'vue'

// The admin session token lives in sessionStorage: it ends with the tab.
const KEY = 'relay.token'
export const token = ref(sessionStorage.getItem(KEY))
export function setToken(t) {
  token.value = t
  if (t) sessionStorage.setItem(KEY, t)
  else sessionStorage.removeItem(KEY)
}

export class ApiError extends Error {
  constructor(status, message, type) {
    super(message)
    this.status = status
    this.type = type
  }
}

// Called when the server no longer accepts the token (set by the router).
let onExpired = () => {}
export function onSessionExpired(fn) {
  onExpired = fn
}

/** A call to the admin API; throws ApiError with the API's `error.message`. */
export async function api(path, { method = 'GET', body, raw = false, signal } = {}) {
  const headers = {}
  if (token.value) headers.authorization = `Bearer ${token.value}`
  if (body !== undefined) headers['content-type'] = 'application/json'
  let res
  try {
    res = await fetch(`/admin/api${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal })
  } catch (e) {
    throw new ApiError(0, e.message || 'network error')
  }
  if (res.status === 401 && path !== '/login') {
    const had = !!token.value
    setToken(null)
    if (had) onExpired()
    throw new ApiError(401, 'session expired', 'authentication_error')
  }
  if (!res.ok) {
    let msg = `HTTP ${res.status}`
    let type
    try {
      const j = await res.json()
      msg = j?.error?.message || msg
      type = j?.error?.type
    } catch {}
    throw new ApiError(res.status, msg, type)
  }
  if (raw) return res
  if (res.status === 204) return null
  const text = await res.text()
  return text ? JSON.parse(text) : null
}

/** Whether the error says the endpoint itself does not exist on this server (an older build). */
export const isMissing = (e) => (e?.status === 404 && /no such admin endpoint/i.test(e.message)) || e?.status === 405

/** Like api(), but null when the endpoint does not exist on this server. */
export async function optional(path, opts) {
  try {
    return await api(path, opts)
  } catch (e) {
    if (isMissing(e)) return null
    throw e
  }
}

/**
 * Saves an admin API answer as a file named `name`. The session's token goes in the header, as
 * for every call (never in a URL); errors throw like api().
 */
export async function download(path, name, opts = {}) {
  const res = await api(path, { ...opts, raw: true })
  const a = document.createElement('a')
  a.href = URL.createObjectURL(await res.blob())
  a.download = name
  a.click()
  setTimeout(() => URL.revokeObjectURL(a.href), 1000)
}

export function qs(o) {
  const p = new URLSearchParams()
  for (const [k, v] of Object.entries(o)) if (v !== undefined && v !== null && v !== '') p.set(k, v)
  const s = p.toString()
  return s ? `?${s}` : ''
}
