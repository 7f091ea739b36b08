import { ref, computed } from 'vue'
import { optional } from './api.js'

// The signed-in user (`GET /me`): name, role, instance, display currency. Set by the shell.
export const me = ref(null)
const rank = { viewer: 0, operator: 1, admin: 2 }
/** Whether the signed-in user's role is at least `role` (before /me answers: no). */
export const can = (role) => (rank[me.value?.role] ?? -1) >= rank[role]
export const isAdmin = computed(() => can('admin'))
/** Asks `/me` again (after a change of the settings it reports). */
export async function loadMe() {
  me.value = await optional('/me').catch(() => null)
}
