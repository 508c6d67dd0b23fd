package fault

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mirrormem/mirrormem/internal/guard"
	"github.com/mirrormem/mirrormem/internal/mem"
	"github.com/mirrormem/mirrormem/uffd"
)

// envHandler marks a process started by StartProcess as a handler process. The init function
// of this package checks it, so any program that imports mirror can be its own handler.
const envHandler = "MIRRORMEM_FAULT_HANDLER"

// procConfig is what a handler process learns from its environment; the *FD fields are
// descriptor numbers in the handler process.
type procConfig struct {
	Role      string // "primary" or "standby"
	Views     []uintptr
	Len       int
	Page      int
	NPages    int
	LogCap    int
	Source    SourceKind
	SourceFD  int
	AliasFD   int
	SourceOff int64
	SourceLen int64
	MaxAround int
	Poison    bool
	NoSpin    bool
	UFFDFD    int
	BlockFD   int
	ParentFD  int // hangs up when the served process stops the handler or dies
	ReadyFD   int // written once serving starts
	LiveFD    int // primary: held open while it lives; standby: hangs up when the primary dies

	SourceName   string // SourceNamed: the registered constructor
	SourceConfig []byte // and its configuration
	Workers      int    // SourceNamed: serving goroutines

	Restore Restore // prefetch and push
}

func init() {
	if v := os.Getenv(envHandler); v != "" {
		os.Unsetenv(envHandler)
		hp, code := setUpHandlerProcess(v)
		if hp == nil {
			os.Exit(code)
		}
		if hp.c.SourceName != "" {
			// A source that is Go code: its constructor is registered by an init function
			// that runs after this one (ServeRegistered). Initialisation goes on until then.
			pending = hp
			return
		}
		os.Exit(hp.serve(nil))
	}
}

// configFile writes pc into a memfd for a handler process, its offset back at 0.
func configFile(pc procConfig) (*os.File, error) {
	data, err := json.Marshal(pc)
	if err != nil {
		return nil, err
	}
	fd, err := mem.MemfdCreate("mirrormem-fault-config", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "mirrormem-fault-config")
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// readConfig reads the configuration that env ("fd:N") points to, and closes descriptor N.
func readConfig(env string, c *procConfig) error {
	var fd int
	if _, err := fmt.Sscanf(env, "fd:%d", &fd); err != nil || fd < 3 {
		return fmt.Errorf("want fd:N, got %.40q", env)
	}
	f := os.NewFile(uintptr(fd), "mirrormem-fault-config")
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return err
	}
	return json.Unmarshal(data, c)
}

// handlerProcess is a handler process set up and ready to serve.
type handlerProcess struct {
	c procConfig
	u *uffd.UFFD
	b *block
}

// uffdOptions: the userfaultfd of a handler process that serves a named source (Go code,
// which may wait in the runtime's poller: a network source waits there for every answer)
// is read through the poller too; any other is kept out of it, for direct reads (see
// serveEngine).
func uffdOptions(c *procConfig) []uffd.Option {
	if c.SourceName != "" {
		return nil
	}
	return []uffd.Option{uffd.WithoutPoller()}
}

// pending is the handler process waiting for its source's constructor to be registered.
var pending *handlerProcess

// setUpHandlerProcess adopts what the served process handed over; nil and an exit status if it
// cannot.
func setUpHandlerProcess(env string) (*handlerProcess, int) {
	var c procConfig
	if err := readConfig(env, &c); err != nil {
		fmt.Fprintf(os.Stderr, "mirrormem: fault handler process: bad %s: %v\n", envHandler, err)
		return nil, 2
	}
	u, err := uffd.FromFD(c.UFFDFD, uffdOptions(&c)...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "mirrormem: fault handler process: %v\n", err)
		return nil, 2
	}
	b, err := newBlock(c.BlockFD, c.NPages, c.LogCap, c.Page)
	if err != nil || b.hdr(hMagic) != magic {
		fmt.Fprintf(os.Stderr, "mirrormem: fault handler process: mapping the counters: %v\n", err)
		return nil, 2
	}
	return &handlerProcess{c: c, u: u, b: b}, 0
}

// fail tells the served process why this handler cannot serve (StartProcess returns it as an
// error) and returns the exit status.
func (hp *handlerProcess) fail(why string) int {
	unix.Write(hp.c.ReadyFD, append([]byte{readyFailed}, why...))
	unix.Close(hp.c.ReadyFD)
	return 2
}

// Ready bytes: the first byte a handler process writes on its ready pipe.
const (
	readyOK     = 1
	readyFailed = 'E' // followed by the reason
)

// serve is the main function of a handler process: it says it is ready, waits to take over if
// it is the standby, and serves until the served process stops it. src is the Go source built
// from a registered constructor, nil for the sources native to the handler (see server).
func (hp *handlerProcess) serve(src io.ReaderAt) int {
	c, b := &hp.c, hp.b
	unix.Write(c.ReadyFD, []byte{readyOK})
	unix.Close(c.ReadyFD)
	if c.Role == "standby" {
		// Wait for the primary to die (its end of LiveFD hangs up) or for the end.
		pfd := []unix.PollFd{{Fd: int32(c.ParentFD), Events: unix.POLLIN}, {Fd: int32(c.LiveFD), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(pfd, -1); err != nil && err != unix.EINTR {
				return 2
			}
			if pfd[0].Revents != 0 || b.hdr(hClosing) != 0 {
				return 0
			}
			if pfd[1].Revents != 0 {
				break
			}
		}
		b.addHdr(hTakeovers, 1)
		fmt.Fprintf(os.Stderr, "mirrormem: fault handler process died; standby handler %d took over serving process %d\n", os.Getpid(), os.Getppid())
	}
	return serveEngine(hp, src)
}

// ServeRegistered is called by the registration of a Go source's constructor. In the handler
// process waiting for that name it builds the source from its configuration and serves: it
// never returns. Anywhere else it does nothing.
func ServeRegistered(name string, open func(config []byte) (io.ReaderAt, error)) {
	hp := pending
	if hp == nil || hp.c.SourceName != name {
		return
	}
	pending = nil
	src, err := open(hp.c.SourceConfig)
	if err == nil && src == nil {
		err = errors.New("the constructor returned a nil source and no error")
	}
	if err != nil {
		os.Exit(hp.fail(fmt.Sprintf("building source %q: %v", name, err)))
	}
	os.Exit(hp.serve(src))
}

// processAvailable reports whether this program can start handler processes (it can re-execute
// itself through /proc/self/exe).
func processAvailable() error {
	if _, err := os.Stat("/proc/self/exe"); err != nil {
		return fmt.Errorf("fault: the handler process re-executes /proc/self/exe: %w", err)
	}
	return nil
}

// readyTimeout bounds how long StartProcess waits for a handler process to start serving (a
// variable for tests).
var readyTimeout = 30 * time.Second

type process struct {
	parentW *os.File // closing it stops the handler processes
	cmds    [2]*exec.Cmd
	blockF  *os.File
	guard   *guard.Guard // ends the program when every handler process is dead (nil with OnDeath)

	mu      sync.Mutex
	closing bool
	alive   int
	failure error
	done    sync.WaitGroup
	// onDeath is called (in a goroutine) when the last handler process dies unexpectedly,
	// instead of the guard ending the program (see ProcessOptions).
	onDeath func(error)
}

// ProcessOptions tune StartProcess.
type ProcessOptions struct {
	// NoStandby starts only the primary handler process (no standby that takes over).
	NoStandby bool
	// OnDeath, for tests, is called when no handler process is left while serving (both
	// died). Without it a guard thread, outside the Go scheduler, ends the program with a
	// message on standard error (exit status 2): the served threads would block forever, and
	// a goroutine could not act while they hold every P.
	OnDeath func(error)
}

// StartProcess serves cfg's faults from a handler process: this program re-executed, receiving
// the userfaultfd, the source and the counters over inherited descriptors. A standby process
// waits to take over if the primary dies. The caller keeps its own userfaultfd open, so the
// views stay registered even if every handler dies: faulting threads block, they never read
// silent zero pages; and the death is reported on standard error and, for the last handler,
// through the guard thread, which ends the program.
func StartProcess(cfg Config, o ProcessOptions) (h *Handler, err error) {
	page := os.Getpagesize()
	if err := cfg.check(page); err != nil {
		return nil, err
	}
	if cfg.Source == SourceMem {
		return nil, errors.New("fault: a handler process cannot read this process's memory: give it a descriptor (SourceFD)")
	}
	if err := processAvailable(); err != nil {
		return nil, err
	}
	bfd, err := mem.MemfdCreate("mirrormem-fault-stats", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	p := &process{blockF: os.NewFile(uintptr(bfd), "mirrormem-fault-stats"), onDeath: o.OnDeath}
	var b *block
	ls := &launch{}
	defer func() {
		ls.close() // the children have their copies
		if err != nil {
			p.kill()
			if b != nil {
				b.unmap()
			}
			p.blockF.Close()
		}
	}()
	if err := unix.Ftruncate(bfd, int64(makeLayout(cfg.Len/page, cfg.LogCap, page).size)); err != nil {
		return nil, os.NewSyscallError("ftruncate", err)
	}
	if b, err = newHandlerBlock(&cfg, bfd, page); err != nil {
		return nil, err
	}
	if err := ls.open(p, &cfg); err != nil {
		return nil, err
	}
	roles := []string{"primary", "standby"}
	if o.NoStandby {
		roles = roles[:1]
	}
	var readies [2]*os.File
	for i, role := range roles {
		if p.cmds[i], readies[i], err = ls.start(p, &cfg, role, page); err != nil {
			return nil, err
		}
	}
	if err := p.awaitReady(roles, readies); err != nil {
		return nil, err
	}
	if o.OnDeath == nil {
		// The death of every handler must end the program even when no goroutine can run (a
		// goroutine blocked in a fault inside runtime assembly keeps its P): a thread outside
		// the Go scheduler watches deadR.
		msg := fmt.Sprintf("mirrormem: every fault handler process of this program died (%s): threads that touch its unfilled mirrored memory could never be served, so the program ends here (exit status %d) instead of hanging or reading zeros\n",
			p.pidList(), deathExit)
		if p.guard, err = guard.Start(int(ls.deadR.Fd()), msg, deathExit); err != nil {
			return nil, fmt.Errorf("fault: %w", err)
		}
	}
	h = &Handler{b: b, cfg: cfg, page: page, backend: p}
	for _, cmd := range p.cmds {
		if cmd != nil {
			p.done.Add(1)
			go p.watch(cmd)
		}
	}
	return h, nil
}

// launch holds the descriptors StartProcess hands its handler processes; they are closed
// once the processes started (each has its copies).
type launch struct {
	files        []*os.File // closed by close
	parentR      *os.File   // hangs up when the served process closes parentW (or dies)
	liveR, liveW *os.File   // the primary holds liveW: the standby sees it hang up
	deadR, deadW *os.File   // every handler holds deadW: deadR hangs up when the last dies
	srcF, aliasF *os.File   // duplicates of the source and alias descriptors, if any
}

func (ls *launch) close() {
	for _, f := range ls.files {
		f.Close()
	}
}

func (ls *launch) pipe() (r, w *os.File, err error) {
	if r, w, err = os.Pipe(); err == nil {
		ls.files = append(ls.files, r, w)
	}
	return r, w, err
}

// open makes the pipes and the duplicates of the caller's descriptors (an *os.File wrapping
// the caller's own would close it when collected).
func (ls *launch) open(p *process, cfg *Config) (err error) {
	var parentW *os.File
	if ls.parentR, parentW, err = os.Pipe(); err != nil {
		return err
	}
	p.parentW = parentW
	ls.files = append(ls.files, ls.parentR)
	if ls.liveR, ls.liveW, err = ls.pipe(); err != nil {
		return err
	}
	if ls.deadR, ls.deadW, err = ls.pipe(); err != nil {
		return err
	}
	if cfg.Source == SourceFD {
		if ls.srcF, err = dupFile(cfg.SourceFD, "source"); err != nil {
			return err
		}
		ls.files = append(ls.files, ls.srcF)
	}
	if cfg.AliasFD >= 0 {
		if ls.aliasF, err = dupFile(cfg.AliasFD, "alias"); err != nil {
			return err
		}
		ls.files = append(ls.files, ls.aliasF)
	}
	return nil
}

// start starts one handler process in role, and returns it with the read end of its ready pipe.
func (ls *launch) start(p *process, cfg *Config, role string, page int) (*exec.Cmd, *os.File, error) {
	pc := procConfig{Role: role, Views: cfg.Views, Len: cfg.Len, Page: page, NPages: cfg.Len / page, LogCap: cfg.LogCap,
		Source: cfg.Source, SourceFD: -1, AliasFD: -1, SourceOff: cfg.SourceOff, SourceLen: cfg.SourceLen,
		MaxAround: cfg.MaxAround, Poison: cfg.Poison, SourceName: cfg.SourceName, SourceConfig: cfg.SourceConfig,
		Workers: cfg.Workers, NoSpin: cfg.NoSpin, Restore: cfg.Restore}
	readyR, readyW, err := ls.pipe()
	if err != nil {
		return nil, nil, err
	}
	extra := []*os.File{cfg.UFFD.File(), p.blockF, ls.parentR, readyW}
	pc.UFFDFD, pc.BlockFD, pc.ParentFD, pc.ReadyFD = 3, 4, 5, 6
	if role == "primary" {
		extra = append(extra, ls.liveW)
	} else {
		extra = append(extra, ls.liveR)
	}
	pc.LiveFD = 7
	extra = append(extra, ls.deadW) // fd 8: held, never used, until the process ends
	if ls.srcF != nil {
		pc.SourceFD = 3 + len(extra)
		extra = append(extra, ls.srcF)
	}
	if ls.aliasF != nil {
		pc.AliasFD = 3 + len(extra)
		extra = append(extra, ls.aliasF)
	}
	// The configuration goes through a memfd, not the environment: a source's config may hold
	// credentials (an HTTP header), which an environment would show in /proc/PID/environ for
	// the life of the process.
	cf, err := configFile(pc)
	if err != nil {
		return nil, nil, err
	}
	ls.files = append(ls.files, cf)
	cfgFD := 3 + len(extra)
	extra = append(extra, cf)
	cmd := &exec.Cmd{
		Path:       "/proc/self/exe",
		Args:       []string{"mirrormem-fault-handler"},
		Env:        append(os.Environ(), fmt.Sprintf("%s=fd:%d", envHandler, cfgFD), goraceNoExitSleep()),
		Stderr:     os.Stderr,
		ExtraFiles: extra,
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("fault: starting the handler process: %w", err)
	}
	readyW.Close() // only the child writes it: its exit hangs readyR up
	return cmd, readyR, nil
}

// awaitReady waits for every handler process to say it serves, within readyTimeout of now
// (they start at once).
func (p *process) awaitReady(roles []string, readies [2]*os.File) error {
	deadline := time.Now().Add(readyTimeout)
	for i, role := range roles {
		var one [1]byte
		readies[i].SetReadDeadline(deadline)
		if _, err := io.ReadFull(readies[i], one[:]); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("fault: the %s handler process (pid %d) did not serve within %v and was killed: does an init function of the program block?",
					role, p.cmds[i].Process.Pid, readyTimeout)
			}
			werr := p.cmds[i].Wait()
			p.cmds[i] = nil
			return fmt.Errorf("fault: the %s handler process exited before serving (%v)", role, werr)
		}
		if one[0] == readyFailed {
			why, _ := io.ReadAll(io.LimitReader(readies[i], 4096))
			p.cmds[i].Wait()
			p.cmds[i] = nil
			return fmt.Errorf("fault: the %s handler process cannot serve: %s", role, why)
		}
		p.alive++
	}
	return nil
}

// deathExit is the exit status of a program whose every handler process died.
const deathExit = 2

func (p *process) pidList() string {
	var pids []string
	for i, c := range p.cmds {
		if c != nil {
			pids = append(pids, fmt.Sprintf("%s pid %d", [2]string{"primary", "standby"}[i], c.Process.Pid))
		}
	}
	return strings.Join(pids, ", ")
}

// goraceNoExitSleep keeps a race-detector build of the handler process from sleeping a second
// when it exits (the detector's default), which would make every Stop take that second.
func goraceNoExitSleep() string {
	if v := os.Getenv("GORACE"); v != "" {
		return "GORACE=" + v + " atexit_sleep_ms=0"
	}
	return "GORACE=atexit_sleep_ms=0"
}

func dupFile(fd int, name string) (*os.File, error) {
	nfd, err := mem.DupCloexec(fd)
	if err != nil {
		return nil, fmt.Errorf("fault: duplicating the %s descriptor %d: %w", name, fd, err)
	}
	return os.NewFile(uintptr(nfd), name), nil
}

// watch reports a handler process's death.
func (p *process) watch(cmd *exec.Cmd) {
	defer p.done.Done()
	err := cmd.Wait()
	p.mu.Lock()
	closing := p.closing
	p.alive--
	alive := p.alive
	if !closing && alive == 0 {
		p.failure = fmt.Errorf("fault: every handler process died (last: pid %d, %v): faults on the views can never be served", cmd.Process.Pid, err)
	}
	failure := p.failure
	p.mu.Unlock()
	if closing {
		return
	}
	if alive > 0 {
		fmt.Fprintf(os.Stderr, "mirrormem: fault handler process %d died (%v); %d handler process left\n", cmd.Process.Pid, err, alive)
		return
	}
	if p.onDeath != nil {
		p.onDeath(failure)
		return
	}
	if p.guard != nil {
		return // the guard thread ends the program, with a message, whether or not this runs
	}
	panic("mirrormem: " + failure.Error() + "; threads touching unfilled pages would block forever, so the program stops here")
}

func (p *process) kill() {
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	if p.guard != nil {
		p.guard.Stop()
	}
	if p.parentW != nil {
		p.parentW.Close()
	}
	for _, cmd := range p.cmds {
		if cmd != nil && cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
}

// stopGrace is how long stop lets the handler processes exit on their own before it kills
// them (a variable for tests).
var stopGrace = time.Second

// stop ends the handler processes within a bounded time, whatever they do: they exit when
// they see the hang-up of parentW, and one that does not within stopGrace (stopped by SIGSTOP,
// or starved) is killed.
func (p *process) stop() error {
	p.mu.Lock()
	p.closing = true
	p.mu.Unlock()
	var err error
	if p.guard != nil {
		err = p.guard.Stop() // before any handler exits
	}
	if cerr := p.parentW.Close(); err == nil { // the handlers see the hang-up and exit
		err = cerr
	}
	exited := make(chan struct{})
	go func() {
		p.done.Wait()
		close(exited)
	}()
	t := time.NewTimer(stopGrace)
	select {
	case <-exited:
		t.Stop()
	case <-t.C:
		for _, cmd := range p.cmds {
			if cmd != nil {
				cmd.Process.Signal(os.Kill) // an error means it has exited meanwhile
			}
		}
		<-exited
	}
	if cerr := p.blockF.Close(); err == nil {
		err = cerr
	}
	return err
}

func (p *process) err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failure
}

func (p *process) kind() string { return "process" }

// Pids returns the handler processes' ids (primary first; 0 for a standby not started).
func (h *Handler) Pids() []int {
	p, ok := h.backend.(*process)
	if !ok {
		return nil
	}
	var pids []int
	for _, c := range p.cmds {
		if c != nil {
			pids = append(pids, c.Process.Pid)
		}
	}
	return pids
}
