// Only the Chart.js parts the pages use are registered (no chart.js/auto).
import {
  Chart, BarController, LineController, DoughnutController, BarElement, LineElement, PointElement, ArcElement,
  CategoryScale, LinearScale, Tooltip, Legend, Filler, Decimation,
} from 'chart.js'

Chart.register(BarController, LineController, DoughnutController, BarElement, LineElement, PointElement, ArcElement,
  CategoryScale, LinearScale, Tooltip, Legend, Filler, Decimation)
Chart.defaults.animation = false
Chart.defaults.responsive = true
Chart.defaults.maintainAspectRatio = false
export { Chart }
