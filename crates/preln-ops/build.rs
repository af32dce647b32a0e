//! Compiles `csrc/preln_ops.cpp` against the libtorch that torch-sys found, and gives binaries
//! the same rpath / `libtorch_cuda` treatment as `build-support/link_libtorch.rs`.

use std::path::PathBuf;

#[path = "../../build-support/link_libtorch.rs"]
mod link_libtorch;

fn main() {
    for f in ["csrc/preln_ops.cpp", "csrc/dist.cpp", "csrc/dist.h", "csrc/nccl.cpp", "csrc/guard.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE");
    link_libtorch::main();
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports DEP_TCH_LIBTORCH_LIB"));
    let include = lib.parent().expect("libtorch lib folder has a parent").join("include");
    // at::parallel_for is inline OpenMP in libtorch's headers: without -fopenmp the shim's kernels
    // would run on one thread. Link the OpenMP runtime libtorch itself loads, so there is one pool.
    let gomp = std::fs::read_dir(&lib)
        .expect("libtorch lib folder is readable")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|name| name.starts_with("libgomp") && name.contains(".so"));
    let mut build = cc::Build::new();
    match &gomp {
        Some(name) => {
            build.flag("-fopenmp");
            println!("cargo:rustc-link-lib=dylib:+verbatim={name}");
        }
        None => println!(
            "cargo:warning=no libgomp next to libtorch in {}: preln-ops kernels run on one thread",
            lib.display()
        ),
    }
    // torch.distributed's Gloo backend (csrc/dist.cpp) needs Gloo's headers, which the torch
    // wheel does not ship: Debian's libgloo-dev, or a folder named by GLOO_INCLUDE.
    let gloo = std::env::var("GLOO_INCLUDE")
        .ok()
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/include")))
        .filter(|dir| dir.join("gloo/algorithm.h").exists());
    match &gloo {
        Some(dir) => {
            build.define("PRELN_HAVE_GLOO", None);
            // -I/usr/include would break libstdc++'s #include_next; it is searched anyway.
            if dir != std::path::Path::new("/usr/include") {
                build.include(dir);
            }
        }
        None => println!(
            "cargo:warning=Gloo's headers not found (Debian: libgloo-dev, or GLOO_INCLUDE): data-parallel training is left out"
        ),
    }
    // NCCL groups (csrc/nccl.cpp) need the CUDA runtime's and NCCL's headers, which a CUDA
    // torch wheel brings in its nvidia-* wheels (site-packages/nvidia/*/include), and
    // libtorch_cuda, which holds ProcessGroupNCCL.
    let nccl = nccl_includes(&lib);
    match &nccl {
        Some(dirs) => {
            build.define("PRELN_HAVE_NCCL", None).define("USE_C10D_NCCL", None).define("USE_CUDA", None);
            dirs.iter().for_each(|d| {
                build.include(d);
            });
        }
        None => println!(
            "cargo:warning=no CUDA libtorch with NCCL's and the CUDA runtime's headers: data-parallel training on GPUs is left out"
        ),
    }
    build
        .cpp(true)
        .file("csrc/preln_ops.cpp")
        .file("csrc/dist.cpp")
        .file("csrc/nccl.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        // libtorch 2.11 (PyPI wheels and the C++ downloads alike) uses the C++11 ABI.
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag("-Wno-psabi")
        .warnings(false)
        .compile("preln_ops");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=torch_cpu");
    println!("cargo:rustc-link-lib=c10");
    if nccl.is_some() {
        println!("cargo:rustc-link-lib=torch_cuda");
        println!("cargo:rustc-link-lib=c10_cuda");
    }
}

/// The include folders of the CUDA runtime (`cuda_runtime_api.h` with what it includes: `crt/`
/// and CCCL's `nv/target`, from the nvidia-cuda-crt and -cccl wheels) and NCCL (`nccl.h`)
/// beside a CUDA libtorch in `lib` (`.../site-packages/torch/lib`), if all are there.
fn nccl_includes(lib: &std::path::Path) -> Option<Vec<PathBuf>> {
    if !lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    let nvidia = lib.parent()?.parent()?.join("nvidia");
    let with = |file: &str| {
        std::fs::read_dir(&nvidia)
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("include")))
            .find(|d| d.join(file).exists())
    };
    Some(vec![with("crt/host_config.h").filter(|d| d.join("nv/target").exists())?, with("nccl.h")?])
}
