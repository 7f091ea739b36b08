// Runs before the first paint (blocking, in <head>) so the page never flashes the wrong theme.
;(function () {
  try {
    var t = localStorage.getItem('relay.theme') || 'system'
    var dark = t === 'dark' || (t === 'system' && window.matchMedia('(prefers-color-scheme: dark)').matches)
    document.documentElement.classList.toggle('dark', dark)
  } catch (e) {}
})()
