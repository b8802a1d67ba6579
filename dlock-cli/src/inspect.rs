//! `dlock status`, `dlock list` and `dlock release --force`: reading locks and freeing stuck
//! ones. Reads never change a lock.

use crate::cli::{ListArgs, ReleaseArgs, StatusArgs};
use crate::connect::{self, Target};
use crate::exit::{self, Failure};
use crate::output::{self, LockJson, shell_quote};
use dlock_runtime::{Error, Holder, LockName, Version};

/// The exact command that frees `name` at `version`.
fn release_command(target: &Target, name: &LockName, version: &Version) -> String {
    format!(
        "dlock release {}--force {} --if-version {}",
        target.backend_flag(),
        shell_quote(name.as_str()),
        shell_quote(version.as_str())
    )
}

/// What frees a held lock if its holder is gone: the exact command, or (for locks that live
/// exactly as long as their process, like file locks) stopping that process.
fn free_hint(target: &Target, name: &LockName, holder: &Holder) -> String {
    if target.backend.capabilities().leases {
        format!(
            "If its holder is gone, free it with:\n  {}",
            release_command(target, name, &holder.version)
        )
    } else {
        format!(
            "It is freed when its process exits ({} locks cannot be forced).",
            target.backend.kind()
        )
    }
}

/// Why a forced release of a lock without a lease is refused.
fn cannot_force(target: &Target, name: &LockName, holder: &Holder) -> String {
    format!(
        "lock `{name}` is held by {}: a {} lock lives exactly as long as the process that holds \
         it, so it cannot be forced free; stop that process (the kernel then frees the lock at \
         once)",
        holder.owner,
        target.backend.kind()
    )
}

fn failed(e: &Error) -> Failure {
    Failure::from_error(e, exit::CONFLICT)
}

/// `dlock status NAME`: exit 0 if held, 1 if free.
pub async fn status(target: &Target, args: &StatusArgs) -> Result<u8, Failure> {
    let name = connect::name(&args.name, "status")?;
    let holder = target
        .backend
        .inspect(&name)
        .await
        .map_err(|e| failed(&e))?;
    if args.json {
        output::print_json(&LockJson::new(name.as_str(), holder.as_ref()));
    } else {
        let command = holder
            .as_ref()
            .map(|h| free_hint(target, &name, h))
            .unwrap_or_default();
        println!(
            "{}",
            output::status_text(name.as_str(), holder.as_ref(), &command)
        );
    }
    Ok(if holder.is_some() { 0 } else { exit::FREE })
}

/// `dlock list [PREFIX]`: every held lock under the backend's prefix.
pub async fn list(target: &Target, args: &ListArgs) -> Result<u8, Failure> {
    let locks: Vec<(LockName, Holder)> = target
        .backend
        .list(&args.prefix)
        .await
        .map_err(|e| failed(&e))?;
    if args.json {
        let all: Vec<LockJson> = locks
            .iter()
            .map(|(name, h)| LockJson::new(name.as_str(), Some(h)))
            .collect();
        output::print_json(&all);
    } else {
        println!("{}", output::list_text(&locks, &args.prefix));
    }
    Ok(0)
}

/// `dlock release --force NAME --if-version V`: frees the lock only if it still has version V.
pub async fn release(target: &Target, args: &ReleaseArgs) -> Result<u8, Failure> {
    let name = connect::name(&args.name, "release")?;
    let Some(version) = args.if_version.as_deref() else {
        // Refuse, and say exactly what to run.
        let holder = target
            .backend
            .inspect(&name)
            .await
            .map_err(|e| failed(&e))?;
        return match holder {
            None => {
                eprintln!("dlock: lock `{name}` is free; there is nothing to release");
                Ok(0)
            }
            Some(h) if !target.backend.capabilities().leases => {
                Err(Failure::new(exit::CONFIG, cannot_force(target, &name, &h)))
            }
            Some(h) => Err(Failure::usage(
                Some("release"),
                format!(
                    "refusing to free lock `{name}` without --if-version: it is held by {} (version \
                     {}), and a forced release must name the version it frees, so that it can \
                     never free a newer holder's lock\n\n  tip: if that holder is gone, run:\n    \
                     {}",
                    h.owner,
                    h.version,
                    release_command(target, &name, &h.version)
                ),
            )),
        };
    };
    let version = Version::new(version);
    // Look first: a version that is not the current one is refused without a write. The
    // release itself is still conditional on the version (this look cannot stand in for it).
    match target
        .backend
        .inspect(&name)
        .await
        .map_err(|e| failed(&e))?
    {
        None => {
            eprintln!("dlock: lock `{name}` is free already; nothing was changed");
            return Ok(0);
        }
        Some(holder) if holder.version != version => {
            return Err(failed(&Error::Changed {
                name: name.to_string(),
                expected: version,
                holder: Some(Box::new(holder)),
            }));
        }
        Some(_) => {}
    }
    match target.backend.force_release(&name, &version).await {
        Ok(()) => {
            eprintln!("dlock: freed lock `{name}` (it had version {version})");
            Ok(0)
        }
        Err(e) => Err(failed(&e)),
    }
}
