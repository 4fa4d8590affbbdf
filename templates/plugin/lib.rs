//! A QEMU TCG plugin (plugin API version 1, QEMU 7.2+) that counts executed guest instructions,
//! in total, between two marker functions and per segment between calls of a layer marker, and
//! measures the stack's high-water mark (the lowest address any store reached inside the stack
//! region: equivalent to painting the stack and looking for the deepest overwritten word, but
//! exact and without code in the firmware). Built by `nnquant verify`.
//!
//! Arguments: `start=0xADDR,end=0xADDR[,layer=0xADDR][,stack_lo=0xADDR,stack_hi=0xADDR]`
//! (marker functions, the Thumb bit ignored; the stack region `[stack_lo, stack_hi)`). At exit
//! it prints `nnquant-insns total=T regions=R region_insns=S stack_min=A segments=a,b,…`
//! (segment sums over all regions) through `qemu_plugin_outs` (visible with `-d plugin`).
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
    fn qemu_plugin_tb_get_insn(tb: *const Tb, idx: usize) -> *mut Insn;
    fn qemu_plugin_register_vcpu_mem_cb(insn: *mut Insn, cb: extern "C" fn(c_uint, u32, u64, *mut c_void), flags: c_int, rw: c_int, userdata: *mut c_void);
}

#[repr(C)]
pub struct Insn {
    _private: [u8; 0],
}

/// `QEMU_PLUGIN_MEM_W`.
const MEM_W: c_int = 2;

#[no_mangle]
pub static qemu_plugin_version: c_int = 1;

/// Executed instructions so far (single vCPU: the M-profile boards have one).
static mut COUNT: u64 = 0;
static START: AtomicU64 = AtomicU64::new(u64::MAX);
static END: AtomicU64 = AtomicU64::new(u64::MAX);
static REGION_BEGIN: AtomicU64 = AtomicU64::new(0);
static REGION_SUM: AtomicU64 = AtomicU64::new(0);
static REGIONS: AtomicU64 = AtomicU64::new(0);
static LAYER: AtomicU64 = AtomicU64::new(u64::MAX);
static SEG_BEGIN: AtomicU64 = AtomicU64::new(0);
static SEG: AtomicU64 = AtomicU64::new(0);
static IN_REGION: AtomicU64 = AtomicU64::new(0);
static SEGMENTS: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());
static STACK_LO: AtomicU64 = AtomicU64::new(0);
static STACK_HI: AtomicU64 = AtomicU64::new(0);
static STACK_MIN: AtomicU64 = AtomicU64::new(u64::MAX);

/// Add the instructions since the segment began to the current segment and start the next.
fn close_segment() {
    let now = count();
    let d = now - SEG_BEGIN.swap(now, Ordering::Relaxed);
    let i = SEG.fetch_add(1, Ordering::Relaxed) as usize;
    let mut v = SEGMENTS.lock().unwrap_or_else(|e| e.into_inner());
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] += d;
}

extern "C" fn on_layer(_vcpu: c_uint, _u: *mut c_void) {
    if IN_REGION.load(Ordering::Relaxed) == 1 {
        close_segment();
    }
}

extern "C" fn on_store(_vcpu: c_uint, _info: u32, vaddr: u64, _u: *mut c_void) {
    if vaddr >= STACK_LO.load(Ordering::Relaxed) && vaddr < STACK_HI.load(Ordering::Relaxed) {
        STACK_MIN.fetch_min(vaddr, Ordering::Relaxed);
    }
}

fn count() -> u64 {
    // SAFETY: QEMU updates COUNT through the inline op on the one vCPU thread; we only read it
    // from callbacks on that same thread.
    unsafe { std::ptr::read_volatile(std::ptr::addr_of!(COUNT)) }
}

extern "C" fn on_start(_vcpu: c_uint, _u: *mut c_void) {
    REGION_BEGIN.store(count(), Ordering::Relaxed);
    SEG_BEGIN.store(count(), Ordering::Relaxed);
    SEG.store(0, Ordering::Relaxed);
    IN_REGION.store(1, Ordering::Relaxed);
}

extern "C" fn on_end(_vcpu: c_uint, _u: *mut c_void) {
    let d = count() - REGION_BEGIN.load(Ordering::Relaxed);
    REGION_SUM.fetch_add(d, Ordering::Relaxed);
    REGIONS.fetch_add(1, Ordering::Relaxed);
    close_segment();
    IN_REGION.store(0, Ordering::Relaxed);
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
        if va == LAYER.load(Ordering::Relaxed) {
            qemu_plugin_register_vcpu_tb_exec_cb(tb, on_layer, 0, std::ptr::null_mut());
        }
        if STACK_HI.load(Ordering::Relaxed) > 0 {
            for i in 0..n as usize {
                let insn = qemu_plugin_tb_get_insn(tb, i);
                qemu_plugin_register_vcpu_mem_cb(insn, on_store, 0, MEM_W, std::ptr::null_mut());
            }
        }
        qemu_plugin_register_vcpu_tb_exec_inline(tb, 0, std::ptr::addr_of_mut!(COUNT) as *mut c_void, n);
    }
}

extern "C" fn on_exit(_id: PluginId, _u: *mut c_void) {
    let segs = SEGMENTS.lock().unwrap_or_else(|e| e.into_inner());
    let segs: Vec<String> = segs.iter().map(u64::to_string).collect();
    let s = format!(
        "nnquant-insns total={} regions={} region_insns={} stack_min={:#x} segments={}\n",
        count(),
        REGIONS.load(Ordering::Relaxed),
        REGION_SUM.load(Ordering::Relaxed),
        STACK_MIN.load(Ordering::Relaxed),
        segs.join(",")
    );
    let c = CString::new(s).expect("no NUL in the report");
    // SAFETY: a valid NUL-terminated string.
    unsafe { qemu_plugin_outs(c.as_ptr()) };
}

fn parse_data(v: &str) -> u64 {
    let v = v.trim();
    u64::from_str_radix(v.strip_prefix("0x").unwrap_or(v), 16).unwrap_or(0)
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
                ("layer", Some(a)) => LAYER.store(a, Ordering::Relaxed),
                // The stack bounds are data addresses: keep bit 0.
                ("stack_lo", Some(_)) => STACK_LO.store(parse_data(&v), Ordering::Relaxed),
                ("stack_hi", Some(_)) => STACK_HI.store(parse_data(&v), Ordering::Relaxed),
                _ => return -1,
            }
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_trans);
    qemu_plugin_register_atexit_cb(id, on_exit, std::ptr::null_mut());
    0
}
