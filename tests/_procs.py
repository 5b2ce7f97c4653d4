"""Real processes for the tests, without paying the import of fastai in each one.

A test that kills a training run with SIGKILL, or launches the ranks of a data-parallel run, needs processes of its own.
Started with `python`, each of them spends ~10 s of this machine's CPU importing torch, torchvision, timm and fastai
before it trains a single batch, and the suite starts about forty of them.

A *zygote* avoids that. Each pytest process forks one at start-up, before any test has run: the zygote imports the heavy
modules once and then waits. `run(argv, ...)` asks it to fork a child that runs `argv` (a script path, or `-m module`) as
`python argv...` would: `sys.argv`, `__main__`, the environment and the working directory as given, stdout and stderr
captured, the exit status of a real process (`-9` after SIGKILL, the code of `SystemExit`, 1 with a traceback for an
uncaught exception). The zygote itself never trains, so no thread pool (OpenMP's included) exists when it forks.

What a forked child cannot change is what the interpreter fixed at start-up: `PYTHONHASHSEED` and `PYTHONPATH` of the
zygote apply (all the runs of one test come from one zygote, so they agree with each other), and torch's thread count
is set from `OMP_NUM_THREADS` of the given environment.

Tests that must prove something about a *fresh* interpreter (`load_learner` in a new process, the installed wheel, the
command's own start-up) keep using `subprocess`.
"""
import os, pickle, shutil, signal, struct, sys, tempfile, time, traceback
from pathlib import Path
from types import SimpleNamespace

PRELOAD = ('torch', 'torch.distributed', 'fastai.vision.all', 'timm', 'medrecipes.xray', 'medrecipes.sar',
           'medrecipes.folder', 'medrecipes.cli', 'medrecipes.resume')

_zygote = None   # (pid, request write-end, reply read-end) in the pytest process


def _send(fd, obj):
    b = pickle.dumps(obj)
    os.write(fd, struct.pack('<I', len(b)) + b)


def _recv(fd):
    head = b''
    while len(head) < 4:
        c = os.read(fd, 4 - len(head))
        if not c: raise EOFError
        head += c
    n, b = struct.unpack('<I', head)[0], b''
    while len(b) < n:
        c = os.read(fd, n - len(b))
        if not c: raise EOFError
        b += c
    return pickle.loads(b)


def _child(req, keep):
    "In the forked child: become `python argv...` and never return."
    code = 1
    try:
        for fd in keep: os.close(fd)
        out, err = (os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for p in (req['stdout'], req['stderr']))
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0); os.dup2(out, 1); os.dup2(err, 2)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, 'w', buffering=1, closefd=False); sys.stderr = open(2, 'w', buffering=1, closefd=False)
        sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr
        os.setpgid(0, 0)   # its own process group: a timeout kills it and whatever it started
        os.environ.clear(); os.environ.update(req['env'])
        if req['cwd']: os.chdir(req['cwd'])
        import torch
        torch.set_num_threads(int(req['env'].get('OMP_NUM_THREADS', 1)))
        import runpy
        argv = [str(a) for a in req['argv']]
        try:
            if argv[0] == '-m':
                sys.argv = argv[1:]
                mod = sys.modules.get(argv[1])
                if mod is not None and callable(getattr(mod, 'main', None)):
                    r = mod.main(argv[2:])   # `if __name__ == '__main__': sys.exit(main())`, without re-running the module
                    code = r if isinstance(r, int) else 0
                else:
                    runpy.run_module(argv[1], run_name='__main__', alter_sys=True); code = 0
            else:
                sys.argv = argv; sys.path[0:0] = [str(Path(argv[0]).resolve().parent)]
                runpy.run_path(argv[0], run_name='__main__'); code = 0
        except SystemExit as e:
            if e.code is None: code = 0
            elif isinstance(e.code, int): code = e.code
            else: print(e.code, file=sys.stderr); code = 1
        except BaseException:
            traceback.print_exc(); code = 1
        for s in (sys.stdout, sys.stderr):
            try: s.flush()
            except Exception: pass
    finally:
        os._exit(code)


def _serve(rq, rp):
    "The zygote's loop: fork a child per request, report exit statuses when polled; ends when the pytest process does."
    dn = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2): os.dup2(dn, fd)
    sys.stdout = open(1, 'w', closefd=False); sys.stderr = open(2, 'w', closefd=False)
    import importlib, warnings
    warnings.simplefilter('ignore')
    for m in PRELOAD:
        try: importlib.import_module(m)
        except Exception: pass
    warnings.resetwarnings()
    import gc; gc.collect(); gc.freeze()   # children share these pages instead of copying them on the first collection
    while True:
        try: op, arg = _recv(rq)
        except EOFError: os._exit(0)
        if op == 'run':
            pid = os.fork()
            if pid == 0: _child(arg, (rq, rp))
            _send(rp, pid)
        elif op == 'poll':
            try:
                p, st = os.waitpid(arg, os.WNOHANG)
                _send(rp, None if p == 0 else os.waitstatus_to_exitcode(st))
            except ChildProcessError: _send(rp, -999)


def start():
    "Fork the zygote of this pytest process (idempotent). Call before any test runs."
    global _zygote
    if _zygote is not None: return
    rq_r, rq_w = os.pipe(); rp_r, rp_w = os.pipe()   # requests to the zygote, its replies
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(rq_w); os.close(rp_r)
        try: _serve(rq_r, rp_w)
        finally: os._exit(0)
    os.close(rq_r); os.close(rp_w)
    _zygote = (pid, rq_w, rp_r)


def stop():
    global _zygote
    if _zygote is None: return
    pid, a, c = _zygote; _zygote = None
    os.close(a); os.close(c)
    try: os.waitpid(pid, 0)
    except ChildProcessError: pass


def _ask(op, arg):
    if _zygote is None: start()
    _send(_zygote[1], (op, arg))
    return _recv(_zygote[2])


def _env(env):
    return {k: str(v) for k, v in (os.environ if env is None else env).items()}


def spawn(argv, env=None, cwd=None):
    "Start `python argv...` as a child of the zygote; returns a handle for `wait`."
    d = Path(tempfile.mkdtemp(prefix='zyg'))
    req = dict(argv=[str(a) for a in argv], env=_env(env), cwd=str(cwd) if cwd else None,
               stdout=str(d/'stdout'), stderr=str(d/'stderr'))
    return SimpleNamespace(pid=_ask('run', req), dir=d, returncode=None)


def poll(h):
    if h.returncode is None:
        rc = _ask('poll', h.pid)
        if rc is not None: h.returncode = rc
    return h.returncode


def _kill(h):
    for f in (lambda: os.killpg(h.pid, signal.SIGKILL), lambda: os.kill(h.pid, signal.SIGKILL)):
        try: f()
        except ProcessLookupError: pass


def wait(handles, timeout=600, any_failure_kills_all=True):
    """Wait for every handle; as a launcher of data-parallel ranks does, a rank that fails gets the others killed (they
    would wait for it forever). Returns completed-process-like results (returncode, stdout, stderr)."""
    t0 = time.monotonic()
    while True:
        rcs = [poll(h) for h in handles]
        if all(rc is not None for rc in rcs): break
        if any_failure_kills_all and any(rc not in (None, 0) for rc in rcs):
            for h, rc in zip(handles, rcs):
                if rc is None: _kill(h)
        if time.monotonic() - t0 > timeout:
            for h in handles: _kill(h)
            raise TimeoutError(f'{[h.pid for h in handles]} still running after {timeout} s')
        time.sleep(0.05)
    res = []
    for h in handles:
        out, err = ((h.dir/n).read_text(errors='replace') for n in ('stdout', 'stderr'))
        shutil.rmtree(h.dir, ignore_errors=True)   # the captured output is read: its temporary folder goes
        res.append(SimpleNamespace(returncode=h.returncode, stdout=out, stderr=err))
    return res


def run(argv, env=None, cwd=None, timeout=600):
    "`subprocess.run([sys.executable, *argv], env=env, cwd=cwd, capture_output=True, text=True)`, forked from the zygote."
    return wait([spawn(argv, env, cwd)], timeout)[0]


def run_ranks(nproc, argv, env=None, cwd=None, timeout=900, port=None):
    """`torchrun --nproc_per_node nproc argv...` on this host: one forked child per rank with RANK, LOCAL_RANK,
    WORLD_SIZE, MASTER_ADDR and MASTER_PORT set. The returncode is the first failing rank's, else 0; stdout and stderr
    are the ranks' joined."""
    import socket
    if port is None:
        with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    base = _env(env)
    hs = [spawn(argv, {**base, 'RANK': r, 'LOCAL_RANK': r, 'WORLD_SIZE': nproc, 'LOCAL_WORLD_SIZE': nproc,
                       'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': port}, cwd) for r in range(nproc)]
    res = wait(hs, timeout)
    bad = [r.returncode for r in res if r.returncode != 0]
    return SimpleNamespace(returncode=bad[0] if bad else 0, stdout=''.join(r.stdout for r in res),
                           stderr=''.join(r.stderr for r in res), ranks=res)


def kill_callbacks(mode:str) -> list:
    """The callbacks of a training child started with `mode`: for `kill:EPOCH:BATCH[:RANK]` one fastai callback that
    kills its process with SIGKILL after training batch BATCH of epoch EPOCH (on rank RANK only, in a data-parallel run),
    without any clean-up, as a killed job dies; for any other mode none."""
    if not mode.startswith('kill'): return []
    from fastai.callback.core import Callback
    at = tuple(int(v) for v in mode.split(':')[1:])
    epoch, batch, rank = at if len(at) == 3 else (*at, None)

    class Kill(Callback):
        order = 0
        def after_batch(self):
            if self.training and (self.epoch, self.iter) == (epoch, batch) and rank in (None, int(os.environ.get('RANK', 0))):
                os.kill(os.getpid(), signal.SIGKILL)
    return [Kill()]
