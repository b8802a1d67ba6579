//! The command line: every subcommand, option and help text, in one clap definition that the
//! parser, `dlock completions` and `dlock man` all use.

use crate::exit;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::time::Duration;

/// How `dlock` explains itself in `--help` (and the man page's description).
const LONG_ABOUT: &str = "\
Run any shell command under a distributed lock, like flock(1) across machines: for CI/CD \
pipelines, cron jobs and deploy scripts that must never run twice at once.

`dlock run` takes the lock, runs the command, renews the lease while it runs and releases the \
lock when it ends; the command's exit status passes through. `dlock status`, `dlock list` and \
`dlock release --force` inspect and free stuck locks.

The locks live where --backend (or DLOCK_BACKEND) says; without either, in the file backend's \
per-user directory on this machine. Cloud backends take the rest of their settings from the \
usual environment (AWS_REGION, AWS_ENDPOINT_URL, AWS profiles and roles; \
GOOGLE_APPLICATION_CREDENTIALS, STORAGE_EMULATOR_HOST; credentials in the MongoDB, PostgreSQL, \
Redis or etcd URL).";

/// The exit-code table shown at the end of `dlock --help` and in the man page.
pub const EXIT_CODES: &str = "\
EXIT CODES:
  0      run: the command exited 0 | status: the lock is held | release: freed (or already free)
  1      status: the lock is free
  1-255  run: the command's own exit status, passed through
  128+N  run: the command was killed by signal N (130 = SIGINT, 143 = SIGTERM, 137 = SIGKILL);
         also dlock itself when SIGINT/SIGTERM/SIGHUP arrives while it is still waiting
  64     usage error (EX_USAGE): bad option, duration, lock name or backend URL, missing
         command after `--`, memory://, release without --if-version; nothing was acquired
  65     release --force: the lock no longer has the version given (EX_DATAERR); nothing changed
  69     the backend is unavailable (EX_UNAVAILABLE): unreachable, throttled, timed out
  70     internal error (EX_SOFTWARE)
  71     the command could not be started for a system reason (EX_OSERR)
  75     run: the lock stayed busy for the whole --timeout (EX_TEMPFAIL, like `flock -E 75`);
         change it with --conflict-exit-code
  78     the backend refused in a way retrying will not fix (EX_CONFIG): access denied, missing
         bucket or table, a file lock held by a live process cannot be forced; or
         --fencing-env on a backend without fencing tokens
  79     run: the lease was lost while the command ran and --on-lost kill stopped it (or the
         loss was found at release); the work may have overlapped with another holder
  126    run: the command was found but could not be executed
  127    run: the command was not found

A command that exits with one of dlock's own codes (64-79) cannot be told from dlock's;
move the busy code with --conflict-exit-code if your command uses 75.";

/// `dlock run --help`: what the command sees, and how the lock ends.
const RUN_AFTER_HELP: &str = "\
THE COMMAND'S ENVIRONMENT:
  DLOCK_NAME           the lock name
  DLOCK_FENCING_TOKEN  the fencing token, where the backend issues them (file, dynamodb,
                       mongodb, postgres, redis, etcd); not set on s3 and gs. --fencing-env VAR sets VAR as well.

SIGNALS:
  The command runs in its own process group (like timeout(1)), so it cannot read from the
  terminal. SIGINT, SIGTERM and SIGHUP sent to dlock are forwarded to that whole group; the lock
  is released once the command has exited, and its status passes through (143 after SIGTERM).
  If dlock is killed with SIGKILL, a file lock is freed at once by the kernel, a lease after
  its --ttl.

LOST LEASE (--on-lost):
  kill  SIGTERM to the command's process group, SIGKILL 5 s later if it is still running;
        dlock exits 79. The default on backends with leases (all but file).
  warn  print a warning and let the command finish; its status passes through. The default on
        the file backend, whose locks last as long as dlock and are never lost.

EXAMPLES:
  dlock run --name deploy-prod -- ./deploy.sh prod
  dlock run -b s3://ci-locks/app --name migrate --timeout 10m -- make migrate
  dlock run -q --name nightly --timeout 0s --conflict-exit-code 0 -- ./nightly.sh  # cron: skip if running
";

/// `dlock status --help` and `dlock list --help`: the JSON schema.
const JSON_SCHEMA: &str = "\
JSON OUTPUT (--json):
  One stable schema; fields may be added, never renamed, removed or retyped.
  {\"name\": \"deploy\", \"held\": true,
   \"holder\": {\"owner\": \"4bc13b39...\", \"host\": \"ci-7\", \"pid\": 4242,
              \"since\": \"2026-11-22T15:03:16.364Z\", \"ttl_ms\": 30000,
              \"version\": \"3\", \"fencing_token\": 7}}
  name           the lock name
  held           true if someone holds it (list shows held locks only)
  holder         null when free; owner/host/pid are null while a new holder has not written
                 its record yet
  since          RFC 3339 UTC, by the holder's own clock (for people, never for decisions);
                 null if the backend does not record it
  ttl_ms         the holder's lease in milliseconds; null where the lock has no lease (file)
  version        the record version: give it to `dlock release --force NAME --if-version V`
  fencing_token  null where the backend issues none (s3, gs)
`dlock list --json` prints a JSON array of these objects, sorted by name.";

/// `dlock release --help`.
const RELEASE_AFTER_HELP: &str = "\
FORCED RELEASE:
`dlock release` frees another process's lock, for an operator whose holder is gone (a lease
otherwise expires by itself after its ttl). It is conditional: the lock is freed only if its
record still has the version you saw in `dlock status`, so a newer holder's lock is never freed.
Without --if-version it changes nothing and prints the exact command to run.
A file lock cannot be forced: it is held by a live process, which must be stopped.";

/// `dlock`: run commands under a distributed lock, and inspect or free locks.
#[derive(Debug, Parser)]
#[command(
    name = "dlock",
    version,
    about = "Run commands under a distributed lock (flock(1) across machines), and inspect or free locks",
    long_about = LONG_ABOUT,
    after_help = EXIT_CODES,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Options every subcommand takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes (before or after the subcommand's name).
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Where the locks live: file:///dir, s3://bucket/prefix, gs://..., dynamodb://table,
    /// mongodb://..., postgres://..., redis://..., etcd://... [default: the file backend in $TMPDIR/dlock-$UID]
    #[arg(
        long,
        short = 'b',
        global = true,
        env = "DLOCK_BACKEND",
        value_name = "URL",
        long_help = backend_help()
    )]
    pub backend: Option<String>,
    /// Print only errors: no status line while waiting, no warnings from the runtime.
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log more (-v info, -vv debug, -vvv trace) on stderr; RUST_LOG, if set, overrides it.
    #[arg(long, short, global = true, action = ArgAction::Count)]
    pub verbose: u8,
}

fn backend_help() -> String {
    format!(
        "Where the locks live: file:///var/lock/app (this machine; add ?shared=true to share the \
         directory with every user), s3://bucket/prefix, gs://bucket/prefix, dynamodb://table, \
         mongodb://host:port/db?collection=locks, postgres://user@host/db?table=locks, \
         redis://host:6379/?prefix=dlock:, etcd://host:2379/prefix (every scheme \
         dlock_runtime::backend_from_url takes). memory:// is refused: a lock in the memory \
         of a process that exits at once protects nothing.\n\n\
         Default: $DLOCK_BACKEND, else the file backend's per-user directory $TMPDIR/dlock-$UID \
         (here: {}), which locks across the processes of one user on this machine only.",
        dlock_runtime::FileBackend::default_dir().display()
    )
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command while holding a lock; its exit status passes through.
    #[command(after_help = RUN_AFTER_HELP)]
    Run(RunArgs),
    /// Show who holds a lock; exit 0 if held, 1 if free.
    #[command(after_help = JSON_SCHEMA)]
    Status(StatusArgs),
    /// List the held locks whose names start with PREFIX (all of them by default).
    #[command(after_help = JSON_SCHEMA)]
    List(ListArgs),
    /// Free a stuck lock, only if it still has the version `dlock status` showed.
    #[command(after_help = RELEASE_AFTER_HELP)]
    Release(ReleaseArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page (roff) of dlock or of one subcommand: `dlock man run | man -l -`.
    Man(ManArgs),
}

/// `dlock run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The lock name: 1 to 1024 bytes of UTF-8 without control characters.
    #[arg(long, short = 'n', value_name = "NAME")]
    pub name: String,
    /// How long to wait for the lock: `forever` (the default, as in flock(1): a pipeline step
    /// waits its turn instead of failing; the CI job's own timeout still bounds it), a duration
    /// such as 30s, 5m or 1h30m, or 0s for one attempt (like `flock -n`).
    #[arg(
        long,
        short = 't',
        value_name = "DURATION",
        default_value = "forever",
        value_parser = parse_timeout
    )]
    pub timeout: Timeout,
    /// The lease: how long the lock outlives a dlock that was killed (SIGKILL, a lost machine).
    /// Renewed every third of it while the command runs. Not used by the file backend, whose
    /// locks the kernel frees when dlock exits.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Keep the lock at least this long after acquiring it, even if the command ends sooner (so
    /// a short scheduled job is not run again by a replica whose clock is behind). On lease
    /// backends the record keeps it after dlock exits; on the file backend dlock stays that long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub min_hold: Option<Duration>,
    /// The exit status when the lock stayed busy for the whole --timeout (like `flock -E`); 0 with
    /// --quiet skips a busy run silently (cron).
    #[arg(long, value_name = "N", default_value_t = exit::CONFLICT)]
    pub conflict_exit_code: u8,
    /// What to do if the lease is lost while the command runs [default: kill on backends with
    /// leases, warn on the file backend].
    #[arg(long, value_enum, value_name = "ACTION")]
    pub on_lost: Option<OnLost>,
    /// Also pass the fencing token in this environment variable (besides DLOCK_FENCING_TOKEN).
    /// Refused on backends without fencing tokens (s3, gs).
    #[arg(long, value_name = "VAR", value_parser = parse_env_name)]
    pub fencing_env: Option<String>,
    /// The command to run, and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND", num_args = 1..)]
    pub command: Vec<OsString>,
}

/// What `dlock run` does when the lease is lost while the command runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnLost {
    /// Terminate the command's process group (SIGTERM, then SIGKILL after 5 s) and exit 79.
    Kill,
    /// Print a warning and let the command finish.
    Warn,
}

/// How long `dlock run` waits for a busy lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// Without limit.
    Forever,
    /// This long (zero: one attempt).
    For(Duration),
}

impl Timeout {
    /// The duration the runtime takes: [`Duration::MAX`] waits forever.
    pub fn as_duration(self) -> Duration {
        match self {
            Timeout::Forever => Duration::MAX,
            Timeout::For(d) => d,
        }
    }
}

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Timeout::Forever => f.write_str("forever"),
            Timeout::For(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

/// `dlock status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The lock name.
    pub name: String,
    /// Print one JSON object (schema below) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `dlock list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only locks whose names start with this.
    #[arg(default_value = "")]
    pub prefix: String,
    /// Print a JSON array (schema below) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `dlock release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The lock name.
    pub name: String,
    /// Required: says that you mean to free a lock some other process took.
    #[arg(long, required = true)]
    pub force: bool,
    /// Free the lock only if its record still has this version (from `dlock status`).
    #[arg(long, value_name = "VERSION")]
    pub if_version: Option<String>,
}

/// `dlock man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// The subcommand whose page to print (dlock-run(1), ...); dlock(1) by default.
    #[arg(value_parser = ["run", "status", "list", "release", "completions", "man"])]
    pub subcommand: Option<String>,
}

/// `dlock completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to print completions for.
    pub shell: clap_complete::Shell,
}

const DURATION_HINT: &str = "write a number and a unit, like 500ms, 30s, 5m, 1h30m or 2days";

/// A humantime duration (`500ms`, `30s`, `5m`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); {DURATION_HINT}"))
}

/// `forever` or a duration.
fn parse_timeout(text: &str) -> Result<Timeout, String> {
    if text.trim().eq_ignore_ascii_case("forever") {
        return Ok(Timeout::Forever);
    }
    parse_duration(text)
        .map(Timeout::For)
        .map_err(|e| format!("{e}, `0s` for one attempt, or `forever`"))
}

/// A lease: a duration of at least a second (it is renewed every third of it, and a lease
/// shorter than a round trip to the store would be lost at once).
fn parse_ttl(text: &str) -> Result<Duration, String> {
    if text.trim().eq_ignore_ascii_case("forever") {
        return Err(
            "a lease cannot be `forever`: it is how long the lock outlives a dlock that was \
             killed; give a duration like 30s"
                .into(),
        );
    }
    let ttl = parse_duration(text)?;
    if ttl < Duration::from_secs(1) {
        return Err(format!(
            "a ttl of {} is too short: the lease is renewed every third of it, over the network; \
             use at least 1s (the default is 30s)",
            humantime::format_duration(ttl)
        ));
    }
    Ok(ttl)
}

/// An environment variable name for `--fencing-env`.
fn parse_env_name(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && !text.starts_with(|c: char| c.is_ascii_digit())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not an environment variable name; use letters, digits and `_`, not \
             starting with a digit (like DEPLOY_FENCING_TOKEN)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_timeout("forever"), Ok(Timeout::Forever));
        assert_eq!(parse_timeout("0s"), Ok(Timeout::For(Duration::ZERO)));
        assert_eq!(
            parse_timeout("1m30s"),
            Ok(Timeout::For(Duration::from_secs(90)))
        );
        assert!(parse_timeout("5x").unwrap_err().contains("forever"));
        assert!(parse_ttl("forever").is_err());
        assert!(parse_ttl("10ms").is_err());
        assert_eq!(parse_ttl("3s"), Ok(Duration::from_secs(3)));
        assert!(parse_env_name("1X").is_err());
        assert!(parse_env_name("A=B").is_err());
        assert_eq!(parse_env_name("TOKEN_2").as_deref(), Ok("TOKEN_2"));
    }

    #[test]
    fn run_needs_a_command() {
        let err = Cli::try_parse_from(["dlock", "run", "--name", "x"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let cli = Cli::try_parse_from(["dlock", "run", "--name", "x", "--", "echo", "-n", "hi"])
            .expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        assert_eq!(run.command, ["echo", "-n", "hi"]);
        assert_eq!(run.timeout, Timeout::Forever);
    }
}
