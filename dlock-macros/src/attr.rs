//! Parsing and validation of the attribute's options.
//!
//! Every option keeps the span of its value, so an error points at the offending token.

use proc_macro2::{Span, TokenStream};
use std::time::Duration;
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{Error, LitStr, Path};

const VALID_KEYS: &str = "name, backend, timeout, ttl, min_hold, cancel_on_loss, crate";

/// A duration option as written, and the value it parsed to (`None`: `"forever"`).
pub(crate) struct DurationArg {
    pub value: Option<Duration>,
    pub span: Span,
}

/// The parsed options of one `#[distributed_lock(...)]`.
#[derive(Default)]
pub(crate) struct Args {
    pub name: Option<LitStr>,
    pub backend: Option<LitStr>,
    pub timeout: Option<DurationArg>,
    pub ttl: Option<DurationArg>,
    pub min_hold: Option<DurationArg>,
    pub cancel_on_loss: Option<Span>,
    pub krate: Option<Path>,
}

impl Args {
    pub fn parse(tokens: TokenStream) -> syn::Result<Self> {
        let mut args = Args::default();
        let mut errors: Option<Error> = None;
        let parser = syn::meta::parser(|meta| {
            if let Err(e) = args.set(&meta) {
                // Keep going so that one expansion reports every bad option at once.
                match &mut errors {
                    Some(all) => all.combine(e),
                    None => errors = Some(e),
                }
                skip_value(&meta);
            }
            Ok(())
        });
        parser.parse2(tokens)?;
        match errors {
            Some(e) => Err(e),
            None => Ok(args),
        }
    }

    fn set(&mut self, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        let key = meta
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_else(|| {
                let path = &meta.path;
                quote::quote!(#path).to_string().replace(' ', "")
            });
        let span = meta.path.span();
        match key.as_str() {
            "name" => {
                let lit = string_value(meta, &key)?;
                check_name_literal(&lit)?;
                set_once(&mut self.name, lit, &key, span)
            }
            "backend" => {
                let lit = string_value(meta, &key)?;
                if lit.value().trim().is_empty() {
                    return Err(Error::new(
                        lit.span(),
                        "`backend` must name a backend registered in the dlock registry",
                    ));
                }
                set_once(&mut self.backend, lit, &key, span)
            }
            "timeout" => {
                let d = duration_value(meta, &key, Zero::OneAttempt)?;
                set_once(&mut self.timeout, d, &key, span)
            }
            "ttl" => {
                let d = duration_value(meta, &key, Zero::Refused)?;
                set_once(&mut self.ttl, d, &key, span)
            }
            "min_hold" => {
                let d = duration_value(meta, &key, Zero::Refused)?;
                set_once(&mut self.min_hold, d, &key, span)
            }
            "cancel_on_loss" => {
                if meta.input.peek(syn::Token![=]) {
                    return Err(Error::new(
                        span,
                        "`cancel_on_loss` is a flag: write `cancel_on_loss` without a value",
                    ));
                }
                set_once(&mut self.cancel_on_loss, span, &key, span)
            }
            "crate" => {
                let lit = string_value(meta, &key)?;
                let path: Path = lit
                    .parse()
                    .map_err(|e| Error::new(lit.span(), format!("`crate` must be a path: {e}")))?;
                set_once(&mut self.krate, path, &key, span)
            }
            _ => Err(Error::new(
                span,
                format!(
                    "unknown option `{key}` for #[distributed_lock]; valid options: {VALID_KEYS}"
                ),
            )),
        }
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, key: &str, span: Span) -> syn::Result<()> {
    if slot.is_some() {
        return Err(Error::new(span, format!("duplicate option `{key}`")));
    }
    *slot = Some(value);
    Ok(())
}

/// After a bad option, consume its `= value` so parsing can go on to the next one.
fn skip_value(meta: &ParseNestedMeta<'_>) {
    if let Ok(value) = meta.value() {
        let _ = value.parse::<syn::Expr>();
    }
}

fn string_value(meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<LitStr> {
    let value = meta.value().map_err(|_| {
        Error::new(
            meta.path.span(),
            format!("option `{key}` needs a value: `{key} = \"...\"`"),
        )
    })?;
    let expr: syn::Expr = value.parse()?;
    match expr {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => Ok(lit),
        other => Err(Error::new(
            other.span(),
            format!("option `{key}` takes a string literal, e.g. `{key} = \"...\"`"),
        )),
    }
}

/// What a zero duration means for an option.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    /// `timeout = "0s"`: one attempt (and `"forever"` waits without limit).
    OneAttempt,
    /// Zero makes no sense (`ttl`, `min_hold`).
    Refused,
}

fn duration_value(meta: &ParseNestedMeta<'_>, key: &str, zero: Zero) -> syn::Result<DurationArg> {
    let lit = string_value(meta, key)?;
    let text = lit.value();
    if text.trim() == "forever" {
        if zero == Zero::OneAttempt {
            return Ok(DurationArg {
                value: None,
                span: lit.span(),
            });
        }
        return Err(Error::new(
            lit.span(),
            format!("`{key}` cannot be \"forever\"; only `timeout` can"),
        ));
    }
    let hint = if zero == Zero::OneAttempt {
        "write it like \"500ms\", \"60s\" or \"5m\", or \"forever\""
    } else {
        "write it like \"500ms\", \"60s\" or \"5m\""
    };
    let value = humantime::parse_duration(&text).map_err(|e| {
        Error::new(
            lit.span(),
            format!("`{key}` is not a duration ({e}); {hint}"),
        )
    })?;
    if value.is_zero() && zero == Zero::Refused {
        return Err(Error::new(
            lit.span(),
            format!("`{key}` must be greater than zero"),
        ));
    }
    if u64::try_from(value.as_millis()).is_err() {
        return Err(Error::new(lit.span(), format!("`{key}` is too large")));
    }
    if value.subsec_nanos() % 1_000_000 != 0 {
        return Err(Error::new(
            lit.span(),
            format!("`{key}` has a precision of one millisecond; drop the finer part"),
        ));
    }
    Ok(DurationArg {
        value: Some(value),
        span: lit.span(),
    })
}

/// A lock-name template: literal text and `{argument}` placeholders.
pub(crate) enum NamePart {
    Text(String),
    Placeholder(String),
}

/// Splits a name template into parts; `{{` and `}}` stand for literal braces.
pub(crate) fn parse_name_template(template: &str) -> Result<Vec<NamePart>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut ident = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => ident.push(c),
                        None => {
                            return Err(
                                "unclosed `{` in lock name; write `{{` for a literal brace".into(),
                            );
                        }
                    }
                }
                if syn::parse_str::<syn::Ident>(&ident).is_err() && ident != "self" {
                    return Err(format!(
                        "`{{{ident}}}` is not a placeholder: write `{{argument_name}}` (no format specs or expressions)"
                    ));
                }
                if !text.is_empty() {
                    parts.push(NamePart::Text(std::mem::take(&mut text)));
                }
                parts.push(NamePart::Placeholder(ident));
            }
            '}' => return Err("unmatched `}` in lock name; write `}}` for a literal brace".into()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(NamePart::Text(text));
    }
    Ok(parts)
}

fn check_name_literal(lit: &LitStr) -> syn::Result<()> {
    let value = lit.value();
    if value.is_empty() {
        return Err(Error::new(lit.span(), "the lock name must not be empty"));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Error::new(
            lit.span(),
            format!("the lock name must not contain control characters (found {c:?})"),
        ));
    }
    parse_name_template(&value)
        .map(drop)
        .map_err(|msg| Error::new(lit.span(), msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(parts: &[NamePart]) -> String {
        parts
            .iter()
            .map(|p| match p {
                NamePart::Text(t) => format!("T({t})"),
                NamePart::Placeholder(p) => format!("P({p})"),
            })
            .collect()
    }

    #[test]
    fn templates_split_into_text_and_placeholders() {
        let parts = parse_name_template("deploy-{env}-{{x}}").expect("valid");
        assert_eq!(render(&parts), "T(deploy-)P(env)T(-{x})");
        assert_eq!(
            render(&parse_name_template("{a}{b}").expect("valid")),
            "P(a)P(b)"
        );
    }

    #[test]
    fn bad_templates_are_rejected() {
        assert!(parse_name_template("a{").is_err());
        assert!(parse_name_template("a}").is_err());
        assert!(parse_name_template("{a:?}").is_err());
        assert!(parse_name_template("{a.b}").is_err());
        assert!(parse_name_template("{}").is_err());
    }
}
