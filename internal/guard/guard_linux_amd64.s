// The guard thread on linux/amd64: see rawClone in native_linux_unsafe.go.

#include "go_asm.h"
#include "textflag.h"

#define SYS_write		1
#define SYS_rt_sigprocmask	14
#define SYS_clone		56
#define SYS_exit		60
#define SYS_exit_group		231
#define SYS_ppoll		271
#define SIG_SETMASK		2
#define NEG_EINTR		$-4

// func rawClone(flags, blk, stack uintptr) (ret int64, op uintptr)
//
// Registers: the SYSCALL instruction clobbers AX (result), CX and R11; every other register is
// kept, in the parent and in the child, which starts with the parent's registers, AX = 0 and SP
// = stack. BX, R12 and R13 carry values across system calls.
TEXT ·rawClone(SB),NOSPLIT|NOFRAME,$0-40
	MOVQ	flags+0(FP), BX
	MOVQ	blk+8(FP), R12
	MOVQ	stack+16(FP), R13

	// Block every signal on this thread (the kernel keeps SIGKILL and SIGSTOP); the child
	// inherits the mask, so no signal handler ever runs on it.
	MOVL	$SIG_SETMASK, DI
	LEAQ	block_sigAll(R12), SI
	LEAQ	block_sigOld(R12), DX
	MOVL	$8, R10
	MOVL	$SYS_rt_sigprocmask, AX
	SYSCALL
	CMPQ	AX, $0xfffffffffffff001
	JLS	masked
	MOVQ	AX, ret+24(FP)
	MOVQ	$const_opSigprocmask, op+32(FP)
	RET

masked:
	// clone(flags, stack, parent_tid, child_tid, tls): both tid pointers at block.tid; tls is
	// ignored without CLONE_SETTLS.
	MOVQ	BX, DI
	MOVQ	R13, SI
	LEAQ	block_tid(R12), DX
	MOVQ	DX, R10
	MOVQ	DX, R8
	MOVL	$SYS_clone, AX
	SYSCALL
	CMPQ	AX, $0
	JEQ	child

	// Parent: restore the signal mask, then return the tid or the negated errno.
	MOVQ	AX, BX
	MOVL	$SIG_SETMASK, DI
	LEAQ	block_sigOld(R12), SI
	MOVQ	$0, DX
	MOVL	$8, R10
	MOVL	$SYS_rt_sigprocmask, AX
	SYSCALL
	MOVQ	BX, ret+24(FP)
	MOVQ	$const_opClone, op+32(FP)
	RET

child:
	// The guard thread, on its own stack, every signal blocked. From here on: raw system calls
	// only, no Go code, no memory but the block at R12 and the message after it.
poll:
	// ppoll(fds, 2, NULL, NULL, 0): wait without a timeout.
	LEAQ	block_fds(R12), DI
	MOVL	$2, SI
	MOVQ	$0, DX
	MOVQ	$0, R10
	MOVQ	$0, R8
	MOVL	$SYS_ppoll, AX
	SYSCALL
	CMPQ	AX, NEG_EINTR
	JEQ	poll
	CMPQ	AX, $0xfffffffffffff001
	JCC	fire	// any other error: the guard can no longer watch, so fail loudly
	MOVWLZX	const_stopRevents(R12), AX
	TESTL	AX, AX
	JNE	stop
	MOVWLZX	const_fdRevents(R12), AX
	TESTL	AX, AX
	JEQ	poll

fire:
	// write(2, msg, len) until all of it is written or the write fails, then exit_group(code).
	LEAQ	const_msgOff(R12), R13
	MOVQ	block_msgLen(R12), BX
write:
	TESTQ	BX, BX
	JEQ	exitgroup
	MOVL	$2, DI
	MOVQ	R13, SI
	MOVQ	BX, DX
	MOVL	$SYS_write, AX
	SYSCALL
	CMPQ	AX, NEG_EINTR
	JEQ	write
	CMPQ	AX, $0
	JLE	exitgroup
	ADDQ	AX, R13
	SUBQ	AX, BX
	JMP	write
exitgroup:
	MOVLQSX	block_code(R12), DI
	MOVL	$SYS_exit_group, AX
	SYSCALL
	JMP	exitgroup

stop:
	// exit(0): this thread only. The kernel then clears block.tid and wakes Stop.
	MOVL	$0, DI
	MOVL	$SYS_exit, AX
	SYSCALL
	JMP	stop
