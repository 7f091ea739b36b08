import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'
import tailwindcss from '@tailwindcss/vite'
import { resolve } from 'node:path'

// Two entries, built one after the other: the admin SPA (`index.html`, served at /ui/ on the admin
// listener) and the key self-service page (`stats.html`, served at /stats on the relay listener).
// Each gets its own base so every asset URL is absolute and under its own prefix.
export default defineConfig(({ mode }) => {
  const stats = mode === 'stats'
  return {
    base: stats ? '/stats/' : '/ui/',
    plugins: [vue(), tailwindcss()],
    define: { __VUE_PROD_DEVTOOLS__: false, __INTLIFY_PROD_DEVTOOLS__: false },
    build: {
      outDir: stats ? 'dist/stats' : 'dist',
      emptyOutDir: !stats,
      target: 'es2022',
      chunkSizeWarningLimit: 400,
      rollupOptions: { input: resolve(import.meta.dirname, stats ? 'stats.html' : 'index.html') },
    },
    server: {
      proxy: {
        '/admin/api': process.env.RELAY_ADMIN || 'http://127.0.0.1:3001',
      },
    },
  }
})
