//! Links the worker against the interpreter pyo3 builds for, with an rpath to its LIBDIR
//! (pyenv's libpython is not on the loader's path), and bakes that interpreter's path in as
//! the default `--python`, so a binary built from the repository's venv finds the venv.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    let python = std::env::var("PYO3_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let libdir = Command::new(&python)
        .args(["-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR') or '')"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if !libdir.is_empty() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libdir}");
    }
    // An absolute path is kept as given (not canonicalised): a venv's bin/python is a
    // symlink, and the venv is found from the unresolved path.
    let baked = if python.contains('/') { std::path::absolute(&python).map(|p| p.display().to_string()).unwrap_or(python) } else { python };
    println!("cargo:rustc-env=IPPX_BUILD_PYTHON={baked}");
}
