//! With the cargo feature `panel`, the web panel's build (`web/dist`) is embedded in the binary:
//! stop early, with the command that makes it, when it is missing.

fn main() {
    println!("cargo::rerun-if-env-changed=CARGO_FEATURE_PANEL");
    println!("cargo::rerun-if-changed=web/dist/index.html");
    println!("cargo::rerun-if-changed=web/dist/stats/stats.html");
    if std::env::var_os("CARGO_FEATURE_PANEL").is_none() {
        return;
    }
    for file in ["web/dist/index.html", "web/dist/stats/stats.html"] {
        if !std::path::Path::new(file).is_file() {
            eprintln!(
                "error: the cargo feature `panel` embeds the web panel, but {file} is missing.\n\
                 Build it first (needs Node.js 20+ and npm):\n\
                 \n    npm ci --prefix web && npm run build --prefix web\n\
                 \nor build without `--features panel` for a relay without the panel."
            );
            std::process::exit(1);
        }
    }
}
