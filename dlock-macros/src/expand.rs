//! Code generation: wraps a function body in acquire / run / release calls into the runtime.
//!
//! Three shapes of function are supported:
//! - `async fn`: the body becomes an inner `async` block awaited while the guard is held;
//! - a function returning a future (`impl Future`, `Pin<Box<dyn Future>>`, `BoxFuture`) whose
//!   body is a single `async` block, possibly inside `Box::pin(..)` (this is what
//!   `#[async_trait]` produces): the lock is taken inside that block, so it is held while the
//!   future runs, not while it is constructed;
//! - a plain function: the body runs in a closure through the runtime's blocking path.

use crate::attr::{Args, NamePart, parse_name_template};
use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{
    Block, Error, Expr, ExprAsync, FnArg, GenericArgument, ItemFn, Pat, Path, PathArguments,
    ReturnType, Signature, Stmt, Type, TypeParamBound, parse_quote,
};

pub(crate) fn distributed_lock(args: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(e) => {
            let msg = format!("#[distributed_lock] goes on a function with a body: {e}");
            let err = Error::new(e.span(), msg).to_compile_error();
            return quote!(#item #err);
        }
    };
    let result = Args::parse(args).and_then(|args| expand(&args, func.clone()));
    match result {
        Ok(tokens) => tokens,
        // Emit the function unchanged beside the error so call sites do not cascade.
        Err(err) => {
            let err = err.to_compile_error();
            quote!(#func #err)
        }
    }
}

fn expand(args: &Args, mut func: ItemFn) -> syn::Result<TokenStream> {
    if let Some(constness) = &func.sig.constness {
        return Err(Error::new(
            constness.span,
            "#[distributed_lock] cannot go on a `const fn`: taking a lock happens at run time",
        ));
    }
    let krate: Path = args
        .krate
        .clone()
        .unwrap_or_else(|| parse_quote!(::dlock_runtime));
    let spec = lock_spec(args, &func.sig, &krate)?;
    let cancel = args.cancel_on_loss.is_some();

    if func.sig.asyncness.is_some() {
        let ret = return_type(&func.sig.output);
        let body = wrap_async(&krate, &spec, &ret, quote!(move), &func.block, cancel);
        func.block = Box::new(parse_quote!({ #body }));
    } else if let Some(output) = future_output(&func.sig.output) {
        let output = output.clone();
        let inner = inner_async_block(&mut func.block)?;
        let capture = inner.capture.map(ToTokens::into_token_stream);
        let body = wrap_async(
            &krate,
            &spec,
            &output,
            capture.unwrap_or_default(),
            &inner.block,
            cancel,
        );
        inner.block = parse_quote!({ #body });
    } else {
        if let Some(span) = args.cancel_on_loss {
            return Err(Error::new(
                span,
                "`cancel_on_loss` needs an async fn: a synchronous body cannot be cancelled; \
                 check `dlock_runtime::current()` for loss inside the body instead",
            ));
        }
        let ret = return_type(&func.sig.output);
        reject_impl_trait(&ret)?;
        let body = wrap_sync(&krate, &spec, &ret, &func.block);
        func.block = Box::new(parse_quote!({ #body }));
    }
    Ok(func.into_token_stream())
}

/// The statements that replace an async body: acquire, run the original body as an inner
/// `async` block (so `return` and `?` keep their meaning), release, return.
fn wrap_async(
    krate: &Path,
    spec: &TokenStream,
    ret: &Type,
    capture: TokenStream,
    block: &Block,
    cancel_on_loss: bool,
) -> TokenStream {
    let failed = lock_failed(krate, ret);
    // The fake return edge fixes the inner block's output type, so `?` converts errors exactly
    // as it would in the unwrapped function. The body's statements go in as they are, not as
    // a nested block, which would trip `unused_braces` on one-expression bodies.
    let stmts = &block.stmts;
    let body = quote! {
        async #capture {
            #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::empty_loop, clippy::let_unit_value, clippy::needless_return)]
            if false {
                let __dlock_fake_return: #ret = loop {};
                return __dlock_fake_return;
            }
            #(#stmts)*
        }
    };
    let run = if cancel_on_loss {
        quote! {
            match #krate::__private::run_async_until_lost(&__dlock_guard, #body).await {
                ::core::result::Result::Ok(result) => result,
                ::core::result::Result::Err(error) => {
                    #krate::__private::release(__dlock_guard).await;
                    return #failed(error);
                }
            }
        }
    } else {
        quote!(#krate::__private::run_async(&__dlock_guard, #body).await)
    };
    quote! {
        let __dlock_guard = match #krate::__private::acquire(#spec).await {
            ::core::result::Result::Ok(guard) => guard,
            ::core::result::Result::Err(error) => return #failed(error),
        };
        let __dlock_result: #ret = #run;
        #krate::__private::release(__dlock_guard).await;
        __dlock_result
    }
}

/// The statements that replace a synchronous body: the body runs as a closure so `return`
/// keeps its meaning, between a blocking acquire and a blocking release.
fn wrap_sync(krate: &Path, spec: &TokenStream, ret: &Type, block: &Block) -> TokenStream {
    let failed = lock_failed(krate, ret);
    quote! {
        let __dlock_guard = match #krate::__private::acquire_blocking(#spec) {
            ::core::result::Result::Ok(guard) => guard,
            ::core::result::Result::Err(error) => return #failed(error),
        };
        let __dlock_result = #krate::__private::run_sync::<#ret, _>(&__dlock_guard, move || #block);
        #krate::__private::release_blocking(__dlock_guard);
        __dlock_result
    }
}

/// `lock_failed::<Ret>`, spanned at the return type so an unsupported return type is reported
/// there (with the runtime trait's `on_unimplemented` message).
fn lock_failed(krate: &Path, ret: &Type) -> TokenStream {
    quote_spanned!(ret.span()=> #krate::__private::lock_failed::<#ret>)
}

/// The expression that builds the runtime's `LockSpec` for one call.
fn lock_spec(args: &Args, sig: &Signature, krate: &Path) -> syn::Result<TokenStream> {
    let name = match &args.name {
        None => {
            let fn_name = sig.ident.to_string();
            quote!(::std::string::String::from(
                ::core::concat!(::core::module_path!(), "::", #fn_name)
            ))
        }
        Some(lit) => {
            let parts = parse_name_template(&lit.value()).map_err(|m| Error::new(lit.span(), m))?;
            let mut format = String::new();
            let mut values = Vec::new();
            for part in parts {
                match part {
                    NamePart::Text(text) => {
                        format.push_str(&text.replace('{', "{{").replace('}', "}}"))
                    }
                    NamePart::Placeholder(placeholder) => {
                        let ident = argument_ident(sig, &placeholder).ok_or_else(|| {
                            Error::new(lit.span(), unknown_placeholder(sig, &placeholder))
                        })?;
                        format.push_str("{}");
                        values.push(ident);
                    }
                }
            }
            if values.is_empty() {
                quote!(::std::string::String::from(#lit))
            } else {
                let format = syn::LitStr::new(&format, lit.span());
                quote!(::std::format!(#format, #(#values),*))
            }
        }
    };
    let backend = match &args.backend {
        Some(lit) => quote!(::core::option::Option::Some(#lit)),
        None => quote!(::core::option::Option::None),
    };
    let duration = |arg: &Option<crate::attr::DurationArg>| match arg {
        Some(crate::attr::DurationArg {
            value: Some(value),
            span,
        }) => {
            // Checked to fit in u64 milliseconds when parsed.
            let millis = u64::try_from(value.as_millis()).unwrap_or(u64::MAX);
            quote_spanned!(*span=> ::core::option::Option::Some(::core::time::Duration::from_millis(#millis)))
        }
        Some(crate::attr::DurationArg { value: None, span }) => {
            quote_spanned!(*span=> ::core::option::Option::Some(::core::time::Duration::MAX))
        }
        None => quote!(::core::option::Option::None),
    };
    let (timeout, ttl, min_hold) = (
        duration(&args.timeout),
        duration(&args.ttl),
        duration(&args.min_hold),
    );
    Ok(quote! {
        #krate::__private::LockSpec {
            name: #name,
            backend: #backend,
            timeout: #timeout,
            ttl: #ttl,
            min_hold: #min_hold,
        }
    })
}

/// The identifier token of the argument a placeholder names (`self` for the receiver).
fn argument_ident(sig: &Signature, placeholder: &str) -> Option<TokenStream> {
    sig.inputs.iter().find_map(|arg| match arg {
        FnArg::Receiver(r) if placeholder == "self" => Some(r.self_token.into_token_stream()),
        FnArg::Typed(typed) => match &*typed.pat {
            Pat::Ident(p) if p.ident == placeholder => Some(p.ident.to_token_stream()),
            _ => None,
        },
        FnArg::Receiver(_) => None,
    })
}

fn unknown_placeholder(sig: &Signature, placeholder: &str) -> String {
    let names: Vec<String> = sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Receiver(_) => Some("self".to_string()),
            FnArg::Typed(typed) => match &*typed.pat {
                Pat::Ident(p) => Some(p.ident.to_string()),
                _ => None,
            },
        })
        .collect();
    let known = if names.is_empty() {
        "it has no named arguments".to_string()
    } else {
        format!("its arguments are: {}", names.join(", "))
    };
    format!(
        "unknown placeholder `{{{placeholder}}}` in lock name: `{}` has no argument named `{placeholder}` ({known})",
        sig.ident
    )
}

fn return_type(output: &ReturnType) -> Type {
    match output {
        ReturnType::Default => parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    }
}

/// `Some(Output)` when the function returns a future by value instead of being `async`.
fn future_output(output: &ReturnType) -> Option<&Type> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    match &**ty {
        Type::ImplTrait(imp) => future_bound_output(imp.bounds.iter()),
        Type::Path(path) => {
            let last = path.path.segments.last()?;
            let args = generic_types(&last.arguments);
            match last.ident.to_string().as_str() {
                "Pin" => match args.first()? {
                    Type::Path(boxed) => {
                        let boxed = boxed.path.segments.last()?;
                        match generic_types(&boxed.arguments).first()? {
                            Type::TraitObject(obj) if boxed.ident == "Box" => {
                                future_bound_output(obj.bounds.iter())
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                },
                "BoxFuture" | "LocalBoxFuture" => args.first().copied(),
                _ => None,
            }
        }
        _ => None,
    }
}

fn generic_types(args: &PathArguments) -> Vec<&Type> {
    match args {
        PathArguments::AngleBracketed(a) => a
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn future_bound_output<'a>(
    mut bounds: impl Iterator<Item = &'a TypeParamBound>,
) -> Option<&'a Type> {
    bounds.find_map(|bound| {
        let TypeParamBound::Trait(t) = bound else {
            return None;
        };
        let last = t.path.segments.last()?;
        if last.ident != "Future" {
            return None;
        }
        match &last.arguments {
            PathArguments::AngleBracketed(a) => a.args.iter().find_map(|arg| match arg {
                GenericArgument::AssocType(assoc) if assoc.ident == "Output" => Some(&assoc.ty),
                _ => None,
            }),
            _ => None,
        }
    })
}

/// The `async` block a future-returning function's body consists of: `async {..}`,
/// `Box::pin(async {..})` or `async {..}.boxed()`.
fn inner_async_block(block: &mut Block) -> syn::Result<&mut ExprAsync> {
    let span = block.span();
    let not_supported = || {
        Error::new(
            span,
            "#[distributed_lock] on a function that returns a future needs a body that is a single \
             `async move { .. }` block (or `Box::pin(async move { .. })`), so that the lock is held \
             while the future runs; make it an `async fn` otherwise",
        )
    };
    let [Stmt::Expr(expr, None)] = block.stmts.as_mut_slice() else {
        return Err(not_supported());
    };
    let found = match expr {
        Expr::Async(inner) => Some(inner),
        Expr::Call(call) if call.args.len() == 1 && is_pin_call(&call.func) => {
            match call.args.first_mut() {
                Some(Expr::Async(inner)) => Some(inner),
                _ => None,
            }
        }
        Expr::MethodCall(call) if call.method == "boxed" || call.method == "boxed_local" => {
            match &mut *call.receiver {
                Expr::Async(inner) => Some(inner),
                _ => None,
            }
        }
        _ => None,
    };
    found.ok_or_else(not_supported)
}

fn is_pin_call(func: &Expr) -> bool {
    matches!(func, Expr::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "pin"))
}

fn reject_impl_trait(ret: &Type) -> syn::Result<()> {
    struct Finder(Option<proc_macro2::Span>);
    impl<'ast> Visit<'ast> for Finder {
        fn visit_type_impl_trait(&mut self, imp: &'ast syn::TypeImplTrait) {
            self.0.get_or_insert(imp.span());
        }
    }
    let mut finder = Finder(None);
    finder.visit_type(ret);
    match finder.0 {
        None => Ok(()),
        Some(span) => Err(Error::new(
            span,
            "#[distributed_lock] cannot report a busy lock through an `impl Trait` return type; \
             return `Result<T, E>` (with `E: From<dlock_runtime::Error>`), `Option<T>` or `()`",
        )),
    }
}
