//! ippx's one change to zmq-sys 0.12.0: libzmq is built with libsodium, so the CURVE
//! mechanism exists (zmq-sys passes `with_libsodium(None)`, which leaves CURVE out).
//!
//! libsodium comes from the system (Debian: `libsodium-dev`) through pkg-config and is
//! linked statically (zeromq-src asks for `static=sodium`), so the binaries need no
//! libsodium at run time. `SODIUM_LIB_DIR` and `SODIUM_INCLUDE_DIR` override the lookup.

use std::env;
use std::path::PathBuf;

fn libsodium() -> zeromq_src::LibLocation {
    println!("cargo:rerun-if-env-changed=SODIUM_LIB_DIR");
    println!("cargo:rerun-if-env-changed=SODIUM_INCLUDE_DIR");
    if let (Ok(lib), Ok(include)) = (env::var("SODIUM_LIB_DIR"), env::var("SODIUM_INCLUDE_DIR")) {
        return zeromq_src::LibLocation::new(PathBuf::from(lib), PathBuf::from(include));
    }
    // Only the paths: zeromq-src prints the link line itself.
    match pkg_config::Config::new()
        .statik(true)
        .cargo_metadata(false)
        .probe("libsodium")
    {
        Ok(found) => {
            // pkg-config leaves out the system's own directories (Debian's multiarch libdir,
            // /usr/include); its variables still name them.
            let var = |name: &str| pkg_config::get_variable("libsodium", name).ok().map(PathBuf::from);
            let lib = found.link_paths.first().cloned().or_else(|| var("libdir")).unwrap_or_else(|| PathBuf::from("/usr/lib"));
            let include = found
                .include_paths
                .first()
                .cloned()
                .or_else(|| var("includedir"))
                .unwrap_or_else(|| PathBuf::from("/usr/include"));
            zeromq_src::LibLocation::new(lib, include)
        }
        Err(e) => panic!(
            "libsodium not found ({}); ippx builds libzmq with CURVE and needs it: \
             `apt-get install libsodium-dev` (scripts/ensure-sodium), or set SODIUM_LIB_DIR \
             and SODIUM_INCLUDE_DIR",
            e
        ),
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build/main.rs");
    println!("cargo:rerun-if-env-changed=PROFILE");
    let sodium = libsodium();
    // zeromq-src prints this search path with `{:?}`, quotes included, which cargo cannot
    // use; rustc looks for a `static=` library only on -L paths, so say it plainly.
    println!("cargo:rustc-link-search=native={}", sodium.lib_dir().display());
    zeromq_src::Build::new().with_libsodium(Some(sodium)).build();
}
