import { onMounted, onBeforeUnmount, ref } from 'vue'

// One shared timer for every page; it stops while the tab is hidden and catches up when shown.
const subs = new Set()
let timer = null
let period = 10000
export const lastUpdated = ref(null)

function tick() {
  lastUpdated.value = new Date()
  for (const fn of subs) fn()
}
function start() {
  if (timer === null && !document.hidden && subs.size) timer = setInterval(tick, period)
}
function stop() {
  if (timer !== null) clearInterval(timer)
  timer = null
}
document.addEventListener('visibilitychange', () => {
  if (document.hidden) stop()
  else {
    tick()
    start()
  }
})

export function refreshAll() {
  tick()
}

/** Calls `fn` now and on every tick while the component is mounted. */
export function usePoll(fn, ms = 10000) {
  onMounted(() => {
    subs.add(fn)
    if (ms < period || subs.size === 1) {
      period = ms
      stop()
    }
    lastUpdated.value = new Date()
    fn()
    start()
  })
  onBeforeUnmount(() => {
    subs.delete(fn)
    if (!subs.size) {
      stop()
      period = 10000
    }
  })
}
