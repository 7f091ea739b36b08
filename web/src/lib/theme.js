import { ref } from 'vue'

// light / dark / system, stored in localStorage; public/theme.js applies it before the first paint.
const KEY = 'relay.theme'
export const themeChoice = ref(localStorage.getItem(KEY) || 'system')
// Bumped whenever the effective theme changes, so charts can re-read their colours.
export const themeTick = ref(0)
const media = window.matchMedia('(prefers-color-scheme: dark)')

function apply() {
  const dark = themeChoice.value === 'dark' || (themeChoice.value === 'system' && media.matches)
  document.documentElement.classList.toggle('dark', dark)
  themeTick.value++
}
media.addEventListener('change', apply)

export function setTheme(t) {
  themeChoice.value = t
  localStorage.setItem(KEY, t)
  apply()
}

export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim()
}
export const palette = () => ['--c1', '--c2', '--c3', '--c4', '--c5', '--c6', '--c7', '--c8'].map(cssVar)
