//! The `claude-relay` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use claude_relay::config::Config;

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
    /// Print `name=value` lines for the files an upgrade script needs: data_dir, upgrade_sock,
    /// pid_file (the pid of the serving process).
    Paths,
    /// Import Claude Relay Service's API keys, accounts, groups and usage history from its Redis
    /// (read-only) into this relay's store; prints what was (or would be) imported and skipped.
    ImportCrs(ImportCrs),
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
    claude_relay::logging::init();
    let config = match load_config(cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("claude-relay: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => claude_relay::server::run(config, cli.upgrade).map_err(|e| e.to_string()),
        Command::CheckConfig => {
            println!("configuration is valid");
            Ok(())
        }
        Command::NewKey => key_command(&config, None),
        Command::Paths => {
            println!("data_dir={}", config.data_dir.display());
            println!("upgrade_sock={}", config.upgrade_sock.display());
            println!("pid_file={}", claude_relay::server::pid_file(&config).display());
            Ok(())
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
