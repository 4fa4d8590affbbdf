//! A QEMU TCG plugin (plugin API version 1, QEMU 7.2+) that counts executed guest instructions,
//! in total and between two marker functions. Built by `nnquant verify --count-instructions`.
//!
//! Arguments: `start=0xADDR,end=0xADDR` (addresses of the marker functions; the Thumb bit is
//! ignored). At exit it prints `nnquant-insns total=T regions=R region_insns=S` through
//! `qemu_plugin_outs` (visible with `-d plugin`).
#![allow(non_upper_case_globals)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};

type PluginId = u64;
#[repr(C)]
pub struct Tb {
    _private: [u8; 0],
}

extern "C" {
    fn qemu_plugin_register_vcpu_tb_trans_cb(id: PluginId, cb: extern "C" fn(PluginId, *mut Tb));
    fn qemu_plugin_tb_n_insns(tb: *const Tb) -> usize;
    fn qemu_plugin_tb_vaddr(tb: *const Tb) -> u64;
    fn qemu_plugin_register_vcpu_tb_exec_inline(tb: *mut Tb, op: c_int, ptr: *mut c_void, imm: u64);
    fn qemu_plugin_register_vcpu_tb_exec_cb(tb: *mut Tb, cb: extern "C" fn(c_uint, *mut c_void), flags: c_int, userdata: *mut c_void);
    fn qemu_plugin_register_atexit_cb(id: PluginId, cb: extern "C" fn(PluginId, *mut c_void), userdata: *mut c_void);
    fn qemu_plugin_outs(s: *const c_char);
}

#[no_mangle]
pub static qemu_plugin_version: c_int = 1;

/// Executed instructions so far (single vCPU: the M-profile boards have one).
static mut COUNT: u64 = 0;
static START: AtomicU64 = AtomicU64::new(u64::MAX);
static END: AtomicU64 = AtomicU64::new(u64::MAX);
static REGION_BEGIN: AtomicU64 = AtomicU64::new(0);
static REGION_SUM: AtomicU64 = AtomicU64::new(0);
static REGIONS: AtomicU64 = AtomicU64::new(0);

fn count() -> u64 {
    // SAFETY: QEMU updates COUNT through the inline op on the one vCPU thread; we only read it
    // from callbacks on that same thread.
    unsafe { std::ptr::read_volatile(std::ptr::addr_of!(COUNT)) }
}

extern "C" fn on_start(_vcpu: c_uint, _u: *mut c_void) {
    REGION_BEGIN.store(count(), Ordering::Relaxed);
}

extern "C" fn on_end(_vcpu: c_uint, _u: *mut c_void) {
    let d = count() - REGION_BEGIN.load(Ordering::Relaxed);
    REGION_SUM.fetch_add(d, Ordering::Relaxed);
    REGIONS.fetch_add(1, Ordering::Relaxed);
}

extern "C" fn on_trans(_id: PluginId, tb: *mut Tb) {
    // SAFETY: QEMU passes a valid translation block for the duration of this callback.
    unsafe {
        let n = qemu_plugin_tb_n_insns(tb) as u64;
        let va = qemu_plugin_tb_vaddr(tb) & !1;
        if va == START.load(Ordering::Relaxed) {
            qemu_plugin_register_vcpu_tb_exec_cb(tb, on_start, 0, std::ptr::null_mut());
        }
        if va == END.load(Ordering::Relaxed) {
            qemu_plugin_register_vcpu_tb_exec_cb(tb, on_end, 0, std::ptr::null_mut());
        }
        qemu_plugin_register_vcpu_tb_exec_inline(tb, 0, std::ptr::addr_of_mut!(COUNT) as *mut c_void, n);
    }
}

extern "C" fn on_exit(_id: PluginId, _u: *mut c_void) {
    let s = format!(
        "nnquant-insns total={} regions={} region_insns={}\n",
        count(),
        REGIONS.load(Ordering::Relaxed),
        REGION_SUM.load(Ordering::Relaxed)
    );
    let c = CString::new(s).expect("no NUL in the report");
    // SAFETY: a valid NUL-terminated string.
    unsafe { qemu_plugin_outs(c.as_ptr()) };
}

fn parse_addr(v: &str) -> Option<u64> {
    let v = v.trim();
    let hex = v.strip_prefix("0x").unwrap_or(v);
    u64::from_str_radix(hex, 16).ok().map(|a| a & !1)
}

/// # Safety
/// Called by QEMU with `argc` valid C strings in `argv`.
#[no_mangle]
pub unsafe extern "C" fn qemu_plugin_install(id: PluginId, _info: *const c_void, argc: c_int, argv: *const *const c_char) -> c_int {
    for i in 0..argc as usize {
        let arg = CStr::from_ptr(*argv.add(i)).to_string_lossy();
        if let Some((k, v)) = arg.split_once('=') {
            match (k, parse_addr(v)) {
                ("start", Some(a)) => START.store(a, Ordering::Relaxed),
                ("end", Some(a)) => END.store(a, Ordering::Relaxed),
                _ => return -1,
            }
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_trans);
    qemu_plugin_register_atexit_cb(id, on_exit, std::ptr::null_mut());
    0
}
