// The guard thread on linux/arm64: see rawClone in native_linux_unsafe.go.

#include "go_asm.h"
#include "textflag.h"

#define SYS_ppoll		73
#define SYS_write		64
#define SYS_exit		93
#define SYS_exit_group		94
#define SYS_rt_sigprocmask	135
#define SYS_clone		220
#define SIG_SETMASK		2

// func rawClone(flags, blk, stack uintptr) (ret int64, op uintptr)
//
// Registers: SVC returns its result in R0 and keeps every other register, in the parent and in
// the child, which starts with the parent's registers, R0 = 0 and RSP = stack. R9 to R12 carry
// values across system calls.
TEXT ·rawClone(SB),NOSPLIT|NOFRAME,$0-40
	MOVD	flags+0(FP), R9
	MOVD	blk+8(FP), R10
	MOVD	stack+16(FP), R11

	// Block every signal on this thread (the kernel keeps SIGKILL and SIGSTOP); the child
	// inherits the mask, so no signal handler ever runs on it.
	MOVD	$SIG_SETMASK, R0
	ADD	$block_sigAll, R10, R1
	ADD	$block_sigOld, R10, R2
	MOVD	$8, R3
	MOVD	$SYS_rt_sigprocmask, R8
	SVC
	CMN	$4095, R0
	BCC	masked
	MOVD	R0, ret+24(FP)
	MOVD	$const_opSigprocmask, R0
	MOVD	R0, op+32(FP)
	RET

masked:
	// clone(flags, stack, parent_tid, tls, child_tid): both tid pointers at block.tid; tls is
	// ignored without CLONE_SETTLS.
	MOVD	R9, R0
	MOVD	R11, R1
	ADD	$block_tid, R10, R2
	MOVD	R2, R3
	MOVD	R2, R4
	MOVD	$SYS_clone, R8
	SVC
	CBZ	R0, child

	// Parent: restore the signal mask, then return the tid or the negated errno.
	MOVD	R0, R12
	MOVD	$SIG_SETMASK, R0
	ADD	$block_sigOld, R10, R1
	MOVD	$0, R2
	MOVD	$8, R3
	MOVD	$SYS_rt_sigprocmask, R8
	SVC
	MOVD	R12, ret+24(FP)
	MOVD	$const_opClone, R0
	MOVD	R0, op+32(FP)
	RET

child:
	// The guard thread, on its own stack, every signal blocked. From here on: raw system calls
	// only, no Go code, no memory but the block at R10 and the message after it.
poll:
	// ppoll(fds, 2, NULL, NULL, 0): wait without a timeout.
	ADD	$block_fds, R10, R0
	MOVD	$2, R1
	MOVD	$0, R2
	MOVD	$0, R3
	MOVD	$0, R4
	MOVD	$SYS_ppoll, R8
	SVC
	CMN	$4, R0	// -EINTR
	BEQ	poll
	CMN	$4095, R0
	BCS	fire	// any other error: the guard can no longer watch, so fail loudly
	MOVHU	const_stopRevents(R10), R0
	CBNZ	R0, stop
	MOVHU	const_fdRevents(R10), R0
	CBZ	R0, poll

fire:
	// write(2, msg, len) until all of it is written or the write fails, then exit_group(code).
	ADD	$const_msgOff, R10, R11
	MOVD	block_msgLen(R10), R12
write:
	CBZ	R12, exitgroup
	MOVD	$2, R0
	MOVD	R11, R1
	MOVD	R12, R2
	MOVD	$SYS_write, R8
	SVC
	CMN	$4, R0	// -EINTR
	BEQ	write
	CMP	$0, R0
	BLE	exitgroup
	ADD	R0, R11, R11
	SUB	R0, R12, R12
	B	write
exitgroup:
	MOVW	block_code(R10), R0
	MOVD	$SYS_exit_group, R8
	SVC
	B	exitgroup

stop:
	// exit(0): this thread only. The kernel then clears block.tid and wakes Stop.
	MOVD	$0, R0
	MOVD	$SYS_exit, R8
	SVC
	B	stop
