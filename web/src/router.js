import { createRouter, createWebHistory } from 'vue-router'
import { token, onSessionExpired } from './lib/api.js'
import Login from './pages/Login.vue'

export const router = createRouter({
  history: createWebHistory('/ui/'),
  routes: [
    { path: '/', redirect: '/overview' },
    { path: '/login', component: Login, meta: { public: true } },
    { path: '/overview', component: () => import('./pages/Overview.vue') },
    { path: '/keys', component: () => import('./pages/Keys.vue') },
    { path: '/accounts', component: () => import('./pages/Accounts.vue') },
    { path: '/groups', component: () => import('./pages/Groups.vue') },
    { path: '/usage', component: () => import('./pages/Usage.vue') },
    { path: '/live', component: () => import('./pages/Live.vue') },
    { path: '/requests', component: () => import('./pages/Requests.vue') },
    { path: '/settings', component: () => import('./pages/Settings.vue') },
    { path: '/audit', component: () => import('./pages/Audit.vue') },
    { path: '/system', component: () => import('./pages/System.vue') },
    { path: '/:rest(.*)*', redirect: '/overview' },
  ],
})

router.beforeEach((to) => {
  if (!to.meta.public && !token.value) return { path: '/login', query: { redirect: to.fullPath } }
})

onSessionExpired(() => {
  const here = router.currentRoute.value
  if (here.path !== '/login') router.push({ path: '/login', query: { expired: '1', redirect: here.fullPath } })
})
