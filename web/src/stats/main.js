import { createApp } from 'vue'
import '../style.css'
import { i18n } from '../lib/i18n.js'
import StatsApp from './StatsApp.vue'

createApp(StatsApp).use(i18n).mount('#app')
