import { ref, computed } from 'vue'

// The signed-in user (`GET /me`): name, role, instance. Set by the shell.
export const me = ref(null)
const rank = { viewer: 0, operator: 1, admin: 2 }
/** Whether the signed-in user's role is at least `role` (before /me answers: no). */
export const can = (role) => (rank[me.value?.role] ?? -1) >= rank[role]
export const isAdmin = computed(() => can('admin'))
