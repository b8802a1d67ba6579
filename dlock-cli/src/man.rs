//! `dlock man [SUBCOMMAND]`: the man pages, from the same clap definitions as `--help`.

use crate::cli::Cli;
use clap::CommandFactory;
use roff::{Roff, roman};
use std::io::Write;

/// Writes the page of `dlock` (or of `dlock SUBCOMMAND`, titled `dlock-SUBCOMMAND`) as roff.
pub fn render(subcommand: Option<&str>, out: &mut dyn Write) -> std::io::Result<()> {
    let mut top = Cli::command().disable_help_subcommand(true);
    top.build();
    let command = match subcommand {
        None => top,
        Some(name) => top
            .find_subcommand(name)
            .cloned()
            .ok_or_else(|| std::io::Error::other(format!("no subcommand `{name}`")))?,
    };
    let man = clap_mangen::Man::new(command.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if command.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if command.has_subcommands() {
        man.render_subcommands_section(out)?;
    }
    if let Some(after) = command.get_after_help() {
        after_help_sections(&after.to_string()).to_writer(out)?;
    }
    if subcommand.is_none() {
        man.render_version_section(out)?;
    }
    Ok(())
}

/// The text after `--help` as man sections: each `HEADING:` line starts one, and its lines
/// are kept as they are (tables stay aligned).
fn after_help_sections(text: &str) -> Roff {
    let mut roff = Roff::new();
    let mut open = false;
    for line in text.lines() {
        let heading = line
            .strip_suffix(':')
            .filter(|h| !h.starts_with(' ') && h.chars().any(|c| c.is_ascii_uppercase()))
            .filter(|h| h.chars().all(|c| !c.is_ascii_lowercase()));
        match heading {
            Some(heading) => {
                if open {
                    roff.control("fi", [] as [&str; 0]);
                }
                roff.control("SH", [heading]);
                roff.control("nf", [] as [&str; 0]);
                open = true;
            }
            None => {
                if !open {
                    roff.control("SH", ["NOTES"]);
                    roff.control("nf", [] as [&str; 0]);
                    open = true;
                }
                roff.text([roman(line)]);
            }
        }
    }
    if open {
        roff.control("fi", [] as [&str; 0]);
    }
    roff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_renders_with_its_sections() {
        let mut page = Vec::new();
        render(None, &mut page).expect("render");
        let page = String::from_utf8(page).expect("utf-8");
        assert!(page.contains(".TH dlock 1"), "{page}");
        assert!(page.contains(".SH \"EXIT CODES\""), "{page}");
        for sub in ["run", "status", "list", "release", "completions", "man"] {
            let mut page = Vec::new();
            render(Some(sub), &mut page).expect("render");
            let page = String::from_utf8(page).expect("utf-8");
            assert!(page.contains(&format!(".TH dlock-{sub} 1")), "{page}");
        }
    }
}
