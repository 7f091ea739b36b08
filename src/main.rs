//! The `claude-relay` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use claude_relay::config::Config;

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "claude-relay",
    version,
    about = "Self-hosted AI API relay for Claude Code, Codex, Gemini CLI and the SDKs"
)]
struct Cli {
    /// Config file (default: conf/relay.yaml when it exists, else built-in defaults).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Take over the listening sockets of a running instance (zero-downtime upgrade): wait on
    /// `upgrade_sock` until the running instance, sent SIGQUIT, hands them over.
    #[arg(long, short = 'u')]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default).
    Run,
    /// Validate the config and exit.
    CheckConfig,
    /// Print a new client key (`cr_` + 64 hex digits) and its hash for `key_hash:`.
    NewKey,
    /// Print the `key_hash:` of an existing client key, read from standard input.
    HashKey,
    /// Print `name=value` lines for scripts (upgrade, install): listen, admin_listen, https,
    /// data_dir, upgrade_sock, pid_file (the pid of the serving process).
    Paths,
    /// Write a backup of the store (stored keys, accounts with their secrets sealed under the
    /// passphrase, groups, usage statistics) to a file. The embedded store only while the relay
    /// is stopped; Redis at any time.
    Export {
        /// The backup file to write (mode 0600, replaced whole).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Restore a backup file into the store. Into a store that holds keys, accounts or statistics
    /// only with --replace or --merge.
    Import {
        /// The backup file.
        file: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
        /// Delete every stored key and account and all usage statistics first.
        #[arg(long, conflicts_with = "merge")]
        replace: bool,
        /// Write the backup's keys and accounts over those with the same id, and add its usage
        /// buckets where the store has none.
        #[arg(long)]
        merge: bool,
    },
    /// Import Claude Relay Service's API keys, accounts, groups and usage history from its Redis
    /// (read-only) into this relay's store; prints what was (or would be) imported and skipped.
    ImportCrs(ImportCrs),
}

/// Where a backup passphrase comes from: `--passphrase`, `--passphrase-file`, else
/// `RELAY_BACKUP_PASSPHRASE`.
#[derive(clap::Args)]
struct PassphraseArgs {
    /// The passphrase (other users may see a command line: prefer --passphrase-file or
    /// RELAY_BACKUP_PASSPHRASE).
    #[arg(long, conflicts_with = "passphrase_file")]
    passphrase: Option<String>,
    /// A file holding the passphrase (its line end is not part of it).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

impl PassphraseArgs {
    fn resolve(self) -> Result<String, String> {
        use claude_relay::config::{BACKUP_PASSPHRASE_ENV, read_passphrase_file};
        if let Some(p) = self.passphrase {
            return Ok(p);
        }
        if let Some(f) = self.passphrase_file {
            return read_passphrase_file(&f);
        }
        std::env::var(BACKUP_PASSPHRASE_ENV)
            .ok()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("no passphrase: give --passphrase, --passphrase-file or {BACKUP_PASSPHRASE_ENV}"))
    }
}

#[derive(clap::Args)]
struct ImportCrs {
    /// CRS's Redis, `redis://[:password@]host:port/db`.
    #[arg(long)]
    redis: String,
    /// CRS's ENCRYPTION_KEY (prefer --encryption-key-file or CRS_ENCRYPTION_KEY: arguments are
    /// visible to other local users).
    #[arg(long)]
    encryption_key: Option<String>,
    /// A file holding CRS's ENCRYPTION_KEY.
    #[arg(long)]
    encryption_key_file: Option<PathBuf>,
    /// Print the report without writing anything.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn load_config(path: Option<PathBuf>) -> Result<Config, String> {
    let path = path.or_else(|| {
        let p = PathBuf::from("conf/relay.yaml");
        p.exists().then_some(p)
    });
    match path {
        Some(p) => Config::load(&p).map_err(|e| format!("{}: {e}", p.display())),
        None => Config::defaults(&|k| std::env::var(k).ok()).map_err(|e| e.to_string()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    let config = match load_config(cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("claude-relay: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // The server logs as `log:` says; the other commands talk to a person at a terminal.
    let _log = if matches!(command, Command::Run) {
        match claude_relay::logging::init(&config.log) {
            Ok(guard) => Some(guard),
            Err(e) => {
                eprintln!("claude-relay: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        claude_relay::logging::init_stderr();
        None
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let result = match command {
        Command::Run => claude_relay::server::run(config, cli.upgrade).map_err(|e| e.to_string()),
        Command::CheckConfig => {
            println!("configuration is valid");
            Ok(())
        }
        Command::NewKey => key_command(&config, None),
        Command::Paths => {
            println!("listen={}", config.listen);
            println!("admin_listen={}", config.admin_listen);
            println!("https={}", config.tls.is_some());
            println!("data_dir={}", config.data_dir.display());
            println!("upgrade_sock={}", config.upgrade_sock.display());
            println!("pid_file={}", claude_relay::server::pid_file(&config).display());
            Ok(())
        }
        Command::Export { out, passphrase } => passphrase.resolve().and_then(|p| export_command(&config, &out, &p)),
        Command::Import {
            file,
            passphrase,
            replace,
            merge,
        } => {
            let mode = match (replace, merge) {
                (true, _) => claude_relay::backup::ImportMode::Replace,
                (_, true) => claude_relay::backup::ImportMode::Merge,
                _ => claude_relay::backup::ImportMode::Refuse,
            };
            passphrase
                .resolve()
                .and_then(|p| import_command(&config, &file, &p, mode))
        }
        Command::ImportCrs(args) => import_crs(&config, args),
        Command::HashKey => {
            let mut line = String::new();
            match std::io::stdin().read_line(&mut line) {
                Ok(_) => key_command(&config, Some(line.trim().to_string())),
                Err(e) => Err(format!("cannot read standard input: {e}")),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("claude-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn key_command(config: &Config, key: Option<String>) -> Result<(), String> {
    let secret = claude_relay::server::secret_key(config).map_err(|e| e.to_string())?;
    let secrets = claude_relay::secrets::Secrets::new(&secret).map_err(|e| e.to_string())?;
    let key = key.unwrap_or_else(claude_relay::secrets::generate_client_key);
    if key.is_empty() {
        return Err("no key given on standard input".into());
    }
    if config.secret_key.is_none() {
        eprintln!(
            "note: hashed with the generated secret key in {}; a `key_hash:` entry also needs `secret_key` in the config",
            config.data_dir.display()
        );
    }
    println!("key:      {key}");
    println!("key_hash: {}", secrets.hash_client_key_hex(&key));
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
}

fn backup_secrets(config: &Config) -> Result<claude_relay::secrets::Secrets, String> {
    let secret = claude_relay::server::secret_key(config).map_err(|e| e.to_string())?;
    claude_relay::secrets::Secrets::new(&secret).map_err(|e| format!("secret_key: {e}"))
}

fn export_command(config: &Config, out: &std::path::Path, passphrase: &str) -> Result<(), String> {
    claude_relay::backup::format::check_new_passphrase(passphrase).map_err(|e| e.to_string())?;
    let secrets = backup_secrets(config)?;
    let file = runtime()?.block_on(async {
        let store = claude_relay::backup::open_store(config).await?;
        claude_relay::backup::export(store.as_ref(), &secrets, passphrase)
            .await
            .map_err(|e| e.to_string())
    })?;
    claude_relay::private_fs::write_atomically(out, &file)
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!("wrote the backup to {} ({} bytes)", out.display(), file.len());
    Ok(())
}

fn import_command(
    config: &Config,
    file: &std::path::Path,
    passphrase: &str,
    mode: claude_relay::backup::ImportMode,
) -> Result<(), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let (backup, meta) = claude_relay::backup::format::open_with_meta(&bytes, passphrase)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let secrets = backup_secrets(config)?;
    let summary = runtime()?.block_on(async {
        let store = claude_relay::backup::open_store(config).await?;
        let summary = claude_relay::backup::restore(store.as_ref(), &secrets, backup, mode)
            .await
            .map_err(|e| e.to_string())?;
        // Relays running on a shared store reload now instead of at their next periodic reload.
        if let Err(e) = store.publish_change().await {
            eprintln!("claude-relay: imported, but the running relays were not told: {e}");
        }
        Ok::<_, String>(summary)
    })?;
    println!(
        "imported the backup of {} ({} store, relay {}): {} keys, {} accounts, {} usage buckets{}",
        meta.created_at,
        meta.source_backend,
        meta.relay_version,
        summary.keys,
        summary.accounts,
        summary.usage_buckets,
        if summary.usage_buckets_kept > 0 {
            format!(" ({} already there were kept)", summary.usage_buckets_kept)
        } else {
            String::new()
        }
    );
    Ok(())
}

/// CRS's encryption key: the option, else the file, else `CRS_ENCRYPTION_KEY`. Never printed.
fn crs_encryption_key(args: &ImportCrs) -> Result<String, String> {
    let key = match (&args.encryption_key, &args.encryption_key_file) {
        (Some(k), None) => k.clone(),
        (None, Some(p)) => std::fs::read_to_string(p)
            .map_err(|e| format!("cannot read --encryption-key-file {}: {e}", p.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
        (Some(_), Some(_)) => return Err("give --encryption-key or --encryption-key-file, not both".into()),
        (None, None) => std::env::var("CRS_ENCRYPTION_KEY").map_err(|_| {
            "CRS's encryption key is needed: --encryption-key-file, --encryption-key or CRS_ENCRYPTION_KEY".to_string()
        })?,
    };
    if key.is_empty() {
        return Err("CRS's encryption key is empty".into());
    }
    Ok(key)
}

fn import_crs(config: &Config, args: ImportCrs) -> Result<(), String> {
    let key = crs_encryption_key(&args)?;
    let report =
        claude_relay::server::import_crs(config, &args.redis, &key, args.dry_run).map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}
