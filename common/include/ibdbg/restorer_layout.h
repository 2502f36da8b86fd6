/* Where the restorer lives.  Applications never see these addresses at
 * capture time on x86-64 (PIE binaries sit near 0x55..., mmap near 0x7f...);
 * the launcher refuses an image that uses them. */
#ifndef IBDBG_RESTORER_LAYOUT_H
#define IBDBG_RESTORER_LAYOUT_H
#define IBDBG_RESTORER_BASE 0x3f0000000000ull
#define IBDBG_RESTORER_SCRATCH 0x3f0800000000ull
#define IBDBG_RESTORER_VDSO_TMP 0x3f0f00000000ull
#define IBDBG_RESTORER_END 0x3f1000000000ull
#endif
