import { createI18n } from 'vue-i18n'
import en from '../locales/en.json'
import zh from '../locales/zh-CN.json'

const KEY = 'relay.lang'

export function initialLocale() {
  const saved = localStorage.getItem(KEY)
  if (saved === 'en' || saved === 'zh-CN') return saved
  return (navigator.language || '').toLowerCase().startsWith('zh') ? 'zh-CN' : 'en'
}

export const i18n = createI18n({
  legacy: false,
  locale: initialLocale(),
  fallbackLocale: 'en',
  messages: { en, 'zh-CN': zh },
})

export function setLocale(l) {
  i18n.global.locale.value = l
  localStorage.setItem(KEY, l)
  document.documentElement.lang = l
}
document.documentElement.lang = i18n.global.locale.value
