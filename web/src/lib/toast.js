import { ref } from 'vue'
export const toasts = ref([])
let n = 0
export function toast(text, kind = 'ok') {
  const id = ++n
  toasts.value.push({ id, text, kind })
  setTimeout(() => (toasts.value = toasts.value.filter((t) => t.id !== id)), kind === 'error' ? 7000 : 3500)
}
