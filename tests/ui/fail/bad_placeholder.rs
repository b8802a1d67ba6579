use dlock_runtime::distributed_lock;

#[distributed_lock(name = "deploy-{env:?}")]
async fn deploy(env: &str) -> Option<()> {
    let _ = env;
    Some(())
}

fn main() {
    let _ = deploy("prod");
}
