//! Build script shared by every crate that links libtorch into a binary or a test.
//!
//! `torch-sys` finds libtorch and exports its folder (`DEP_TCH_LIBTORCH_LIB`). We give each binary
//! an rpath to it, so `target/release/preln` runs without LD_LIBRARY_PATH. rustc links with
//! `--as-needed`, which drops `libtorch_cuda` (nothing references it by symbol); naming it again
//! after `--no-as-needed` keeps the CUDA backend, so `--device cuda` works with a CUDA libtorch.

use std::path::Path;

pub fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
}
