"""verify.py: is a model's final answer to a math problem equal to the reference answer?

    score(response, gold, timeout=5.0, problem=None) -> 1.0 / 0.0
    extract_answer(response) -> str | None
    score_batch(responses, golds, workers, timeout, problems=None) -> [float]
    VerifierPool(workers).score(responses, golds, timeout, problems) -> [float]
    perturb_answer(gold) -> str                   (a nearby wrong answer, for tests and benchmarks)

How the two files fit: this file is the public face. It finds the final answer in a response, scores it
under a time bound, and scores batches in worker processes. Whether two bare answers are equal
(normalisation, the LaTeX parser, the evaluator, sympy, the decimal policy) is mathparse.is_equivalent,
in mathparse.py, which knows nothing of responses, processes or signals. verify imports mathparse and
nothing else of the project; mathparse imports nothing of the project.

Extraction: the last \\boxed{...} / \\fbox{...}, else the text after the last "the (final) answer is" /
"Answer:" (markdown bold and $, \\$ removed: "**Final Answer:** 42", "the answer is $\\$3$."), else the
last number. Several boxes: the boxes joined to the last one only by ",", "and" or "or x =" form one
answer ("\\boxed{3} and \\boxed{4}" is "3, 4"; "$x=\\boxed{2}$ or $x=\\boxed{3}$" is "2, 3"); a bare "or"
between boxes is hedging between alternatives and scores 0 ("either \\boxed{5} or \\boxed{6}"); any other
text between boxes ("first \\boxed{1}, then \\boxed{2}") leaves only the last group.

Time bound: no call of score() runs past its timeout (default 5 s). In the main thread a SIGALRM
timer (setitimer) interrupts it ALARM_UNWIND before the timeout and re-fires every ALARM_REPEAT
until it returns; the exception is a BaseException so no `except Exception` in sympy swallows it,
and a timer the caller had armed is restored. The only step it waits for is the one import of sympy
per process (mathparse.sympy_importing(); an import cut in half would break sympy for the rest of the
run). Outside the main thread, where signals cannot be delivered, score() hands the pair to a worker
process killed at the timeout. Sizes are bounded before any work (MAX_RESPONSE_CHARS here, mathparse's
MAX_* there), so an oversized response or answer is scored 0 at once.
score_batch runs items in worker processes with a per-item wall-clock limit enforced by the parent
(a stuck worker is killed and replaced, its item scored 0). Workers are plain `python verify.py
--worker` subprocesses speaking over pipes: no fork of the (possibly threaded, vLLM-holding) caller
and no import of its __main__, so they never import torch.

Sections: answer extraction; one pair under a time bound (score); a wrong answer for tests; batches in
worker processes (VerifierPool, score_batch, the worker's loop).
"""

import atexit
import os
import pickle
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections import deque

import mathparse

MAX_RESPONSE_CHARS = 1_000_000  # a longer response is scored 0 (extraction is linear anyway)
MAX_BOX_GAP = 40  # characters between two boxes that form one answer ("$, and $x = ")
DEFAULT_WORKERS = max(1, min(4, os.cpu_count() or 1))
DEFAULT_TIMEOUT = 5.0  # seconds per item, in score() and score_batch
ALARM_REPEAT = 0.05  # seconds between repeated alarms once the time limit has passed
ALARM_UNWIND = 0.25  # score() is interrupted this long before its timeout (a C-level step may finish first)
WORKER_MEMORY_BYTES = 4 << 30  # address-space limit of each worker (RLIMIT_AS)


# ---- answer extraction ---------------------------------------------------------------------------


def _brace_content(text, open_pos):
    """Content of the {...} group opening at text[open_pos], or None when unclosed or too long."""
    depth = 0
    end = min(len(text), open_pos + mathparse.MAX_ANSWER_CHARS + 2)
    for pos in range(open_pos, end):
        ch = text[pos]
        if ch == "{" and text[pos - 1] != "\\":
            depth += 1
        elif ch == "}" and text[pos - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[open_pos + 1 : pos]
    return None


def _boxed_at(text, pos):
    """(answer, end position) of the \\boxed / \\fbox command starting at pos, or None."""
    pos += len("\\boxed") if text.startswith("\\boxed", pos) else len("\\fbox")
    n = len(text)
    if pos < n and text[pos].isalpha():
        return None  # some other command, e.g. \boxedfoo
    while pos < n and text[pos] == " ":
        pos += 1
    if pos < n and text[pos] == "{":
        content = _brace_content(text, pos)
        return None if content is None else (content, pos + len(content) + 2)
    if pos > n - 1 or text[pos - 1] != " ":
        return None
    m = re.compile(r"[^\s$]+").match(text, pos)  # "\boxed 7": TeX takes the next token
    return (m.group(0).rstrip("."), m.end()) if m else None


def _last_box_start(text, end):
    return max(text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end))


_PHRASE_RE = re.compile(r"\b(?:final answer|answer)\b(?:\*\*)?(?:\s*is\b|\s*:)\s*", re.IGNORECASE)
_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
_BOX_VAR = r"(?:[\s$]*(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?\s*=\s*)"  # "x = " before a box
_BOX_AND_RE = re.compile(r"[\s$,;]*(?:(?:and|&|\\text\{\s*and\s*\})[\s$,;]*)?" + _BOX_VAR + "?", re.IGNORECASE)
_BOX_OR_VAR_RE = re.compile(r"[\s$,;]*(?:or|\\text\{\s*or\s*\})" + _BOX_VAR, re.IGNORECASE)  # x = 2 or x = 3
_BOX_OR_RE = re.compile(r"[\s$,;]*(?:or|\\text\{\s*or\s*\})[\s$,;]*", re.IGNORECASE)


def _boxed_answer(response):
    """The boxed final answer: the last box with the boxes chained to it by "," or "and" or
    "or x =" (one list answer: "x = 2 or x = 3" are the two roots); None when a bare "or" joins two
    boxes (a hedge between alternatives); "" when there is no usable box."""
    end = len(response)
    for _ in range(3):  # an unclosed or empty last box: try the two before it
        pos = _last_box_start(response, end)
        if pos < 0:
            return None if end < len(response) else ""  # boxes present but none usable: no guessing
        box = _boxed_at(response, pos)
        if box is not None and box[0].strip():
            break
        end = pos
    else:
        return None
    answers = [box[0].strip()]
    while len(answers) < mathparse.MAX_ITEMS:
        prev = _last_box_start(response, pos)
        box = _boxed_at(response, prev) if prev >= 0 else None
        if box is None or box[1] > pos or not box[0].strip():
            break
        gap = response[box[1] : pos]
        if len(gap) > MAX_BOX_GAP:
            break  # also keeps the regexes below linear: their overlapping classes backtrack on long gaps
        if _BOX_OR_RE.fullmatch(gap):
            return None  # "either \boxed{5} or \boxed{6}": a hedge scores 0
        if not (_BOX_AND_RE.fullmatch(gap) or _BOX_OR_VAR_RE.fullmatch(gap)):
            break  # "first \boxed{1}, then \boxed{2}": only the last group counts
        answers.append(box[0].strip())
        pos = prev
    return ", ".join(reversed(answers))


def extract_answer(response):
    """The response's final answer as a string, or None when it has none.

    Order: the last \\boxed{...} or \\fbox{...} (nested braces; "\\boxed 7" too; when the last box
    is unclosed the two before it are tried, and when none is usable there is no answer). Boxes joined
    to the last one only by ",", "and" or "or x =" form one answer ("\\boxed{3} and \\boxed{4}" is
    "3, 4"); boxes joined by a bare "or" are a hedge and give no answer. Without boxes: the text after the last
    "the (final) answer is" or "Answer:" (markdown bold and dollar signs removed) up to the end of its
    sentence, then the last number in the response.
    """
    if not isinstance(response, str) or len(response) > MAX_RESPONSE_CHARS:
        return None
    boxed = _boxed_answer(response)
    if boxed != "":
        return boxed
    last = None
    for last in _PHRASE_RE.finditer(response):
        pass
    if last is not None:
        tail = response[last.end() : last.end() + mathparse.MAX_ANSWER_CHARS + 1].split("\n", 1)[0]
        tail = re.split(r"\.(?:\s|$)", tail, maxsplit=1)[0]  # sentence end, not a decimal point
        for wrapper in ("\\$", "$", "\\(", "\\)"):  # "\$" first: "$\$3$" is 3
            tail = tail.replace(wrapper, "")
        tail = tail.strip().strip("*:").strip().rstrip(".,;").strip("*").strip()  # "**42**"
        if tail:
            return tail
    number = None
    for number in _NUMBER_RE.finditer(response):
        pass
    return number.group(0) if number else None


# ---- one pair under a time bound: score() --------------------------------------------------------


class _Timeout(BaseException):
    """Raised by the SIGALRM handler inside score(). A BaseException, like KeyboardInterrupt, so that
    no `except Exception` inside sympy can swallow it."""


_ALARM = {"active": False}


def _on_alarm(signum, frame):
    # The timer re-fires every ALARM_REPEAT s until score() disarms it, so an alarm that arrives
    # during the sympy import (deferred) or is swallowed somewhere is followed by another one.
    if _ALARM["active"] and not mathparse.sympy_importing():
        raise _Timeout


def _interrupt_after(timeout):
    """When to stop a computation so that its call returns by `timeout` (time to unwind sympy's stack,
    or to kill a worker process)."""
    return timeout - min(0.25 * timeout, ALARM_UNWIND)


def _call_with_time_limit(seconds, fn, *args):
    """fn(*args) in the main thread, interrupted by SIGALRM after `seconds` (raises _Timeout).
    A timer the caller had armed is restored afterwards with its remaining time."""
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    signal.siginterrupt(signal.SIGALRM, False)  # other threads' (gloo, vLLM) system calls restart, no EINTR
    start = time.monotonic()
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, 0)
    delay = _interrupt_after(seconds)
    delay = min(delay, old_delay) if old_delay > 0 else delay
    try:
        _ALARM["active"] = True
        signal.setitimer(signal.ITIMER_REAL, max(delay, 1e-6), ALARM_REPEAT)
        return fn(*args)
    finally:
        while True:  # the alarm may fire at any bytecode, in this finally block too
            try:
                _ALARM["active"] = False
                break
            except _Timeout:
                continue
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:  # the caller's own timer, minus the time spent here (it fires late, never early)
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-6), old_interval)


_THREAD_POOL = None  # one worker process that scores for callers outside the main thread
_THREAD_POOL_LOCK = threading.Lock()


def _score_in_worker(response, gold, timeout, problem):
    global _THREAD_POOL
    with _THREAD_POOL_LOCK:
        if _THREAD_POOL is None:
            _THREAD_POOL = VerifierPool(1)
        return _THREAD_POOL.score([response], [gold], timeout, [problem])[0]


def _score_unbounded(response, gold, problem):
    answer = extract_answer(response)
    if answer is None:
        return 0.0
    try:
        return 1.0 if mathparse.is_equivalent(answer, gold, problem) else 0.0
    except Exception:  # hostile output must never crash a training step
        return 0.0


def score(response, gold, timeout=DEFAULT_TIMEOUT, problem=None):
    """1.0 when the response's final answer equals the gold answer, else 0.0.

    The call never runs past `timeout` seconds (None: no limit): in the main thread a SIGALRM timer
    interrupts it (scored 0); in any other thread, where signals cannot be delivered (or when SIGALRM
    belongs to a handler installed from C), the pair is scored in a worker process killed at the
    timeout (the first such call also waits for that process to start). `problem` (its text) only
    decides whether a decimal gold may be matched by rounding (the decimal policy in mathparse.py).
    """
    if gold is None or not str(gold).strip():
        raise ValueError(f"gold answer is empty: {gold!r}")
    gold = str(gold)
    if timeout is None:
        return _score_unbounded(response, gold, problem)
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGALRM) is None:
        # None: a C handler we could not restore. The first such call also waits for the worker to start.
        return _score_in_worker(response, gold, _interrupt_after(timeout), problem)
    try:
        return _call_with_time_limit(timeout, _score_unbounded, response, gold, problem)
    except _Timeout:
        return 0.0


# ---- a wrong answer for tests and benchmarks -----------------------------------------------------


def perturb_answer(gold):
    """A nearby wrong answer for tests and benchmarks: the first digit d becomes d+1 (mod 10);
    without digits, the last free letter changes (x -> y, C -> D, else -> x); else append "+1"."""
    for i, ch in enumerate(gold):
        if ch.isdigit():
            return gold[:i] + str((int(ch) + 1) % 10) + gold[i + 1 :]
    free = [m.start() for m in re.finditer(r"(?<![\\a-zA-Z])[a-zA-Z](?![a-zA-Z])|(?<=\\text\{)[a-zA-Z]", gold)]
    if free:
        i = free[-1]
        ch = gold[i]
        new = "y" if ch == "x" else chr((ord(ch) - 64) % 26 + 65) if ch.isupper() else "x"
        return gold[:i] + new + gold[i + 1 :]
    return gold + "+1"


# ---- batches in worker processes: VerifierPool, score_batch --------------------------------------

_RECORD = struct.Struct("<qd")  # worker -> parent: (item index, score); index -1 means "ready"
_HEADER = struct.Struct("<Q")  # parent -> worker: length of a pickled list of (index, response, gold)


class _Worker:
    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        self.fd = self.proc.stdout.fileno()
        self.buffer = b""
        self.ready = False
        self.pending = deque()  # indices sent and not yet answered, in order
        self.deadline = time.monotonic() + 120.0  # for startup

    def send(self, items, timeout):
        payload = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(_HEADER.pack(len(payload)) + payload)
        self.proc.stdin.flush()
        self.pending = deque(item[0] for item in items)
        self.deadline = time.monotonic() + timeout

    def kill(self):
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class VerifierPool:
    """Reusable worker processes for score_batch; per-item wall-clock limit from the parent.

    A worker that passes its deadline on an item (or dies) is killed and replaced, that item is
    scored 0 and counted in .stats; the rest of its chunk is re-queued.
    """

    def __init__(self, workers=DEFAULT_WORKERS):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.size = workers
        self.owner_pid = os.getpid()
        self.workers = [_Worker() for _ in range(workers)]
        self.stats = {"items": 0, "timeouts": 0, "crashes": 0}

    def _replace(self, worker):
        worker.kill()
        self.workers.remove(worker)
        fresh = _Worker()
        self.workers.append(fresh)
        return fresh

    def score(self, responses, golds, timeout=DEFAULT_TIMEOUT, problems=None):
        n = len(responses)
        problems = [None] * n if problems is None else problems
        results = [None] * n
        chunk = max(1, min(64, n // (4 * self.size) or 1))
        queue = deque(list(range(s, min(n, s + chunk))) for s in range(0, n, chunk))
        busy = {}
        failed_starts = 0
        while queue or busy:
            for w in list(self.workers):
                if w.ready and not w.pending and queue and w.fd not in busy:
                    idxs = queue.popleft()
                    try:
                        w.send([(i, responses[i], golds[i], problems[i]) for i in idxs], timeout)
                    except (BrokenPipeError, OSError):
                        queue.appendleft(idxs)
                        self._replace(w)
                        self.stats["crashes"] += 1
                        continue
                    busy[w.fd] = w
            for w in self.workers:
                if not w.ready and queue:  # wait for a (re)starting worker only if work is left
                    busy[w.fd] = w
            wait = max(0.0, min(w.deadline for w in busy.values()) - time.monotonic())
            readable, _, _ = select.select(list(busy), [], [], wait)
            for fd in readable:
                w = busy[fd]
                data = os.read(fd, 1 << 16)
                if not data:  # the worker died (crash, memory limit)
                    busy.pop(fd)
                    if not w.ready:
                        failed_starts += 1
                        if failed_starts >= 3:
                            raise RuntimeError("verify.py workers fail to start; see their stderr above")
                    self._lose(w, results, queue, "crashes")
                    continue
                w.buffer += data
                while len(w.buffer) >= _RECORD.size:
                    idx, value = _RECORD.unpack_from(w.buffer)
                    w.buffer = w.buffer[_RECORD.size :]
                    if idx < 0:
                        w.ready = True
                        continue
                    results[idx] = value
                    w.pending.popleft()
                    w.deadline = time.monotonic() + timeout
                if w.ready and not w.pending:
                    busy.pop(fd)
            now = time.monotonic()
            for fd, w in list(busy.items()):
                if now > w.deadline:
                    busy.pop(fd)
                    if not w.ready:
                        raise RuntimeError("a verify.py worker did not start within 120 s")
                    self._lose(w, results, queue, "timeouts")
        self.stats["items"] += n
        return results

    def _lose(self, worker, results, queue, reason):
        """The worker's current item scores 0; the rest of its chunk goes back to the queue."""
        self.stats[reason] += 1
        if worker.pending:
            results[worker.pending.popleft()] = 0.0
        if worker.pending:
            queue.appendleft(list(worker.pending))
        worker.pending = deque()
        self._replace(worker)
        if reason == "crashes":
            warnings.warn("a verify.py worker died; its item was scored 0", RuntimeWarning)

    def close(self):
        if os.getpid() != self.owner_pid:
            return  # a forked copy does not own these processes
        for w in self.workers:
            try:
                w.proc.stdin.close()  # EOF: the worker exits on its own
            except OSError:
                pass
        for w in self.workers:
            try:
                w.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            w.kill()
        self.workers = []


_POOL = None


def _close_pool():
    global _POOL, _THREAD_POOL
    for pool in (_POOL, _THREAD_POOL):
        if pool is not None:
            pool.close()
    _POOL = _THREAD_POOL = None


atexit.register(_close_pool)


def score_batch(responses, golds, workers=DEFAULT_WORKERS, timeout=DEFAULT_TIMEOUT, problems=None):
    """Scores of many (response, gold) pairs, in order.

    workers=0 scores in this process, each item under score()'s own time limit.
    workers>=1 uses a module-level pool of that many worker processes, created on first use and
    reused by later calls (closed at interpreter exit); each item gets `timeout` seconds.
    An empty or None gold is a data error: ValueError naming the item. problems (texts, optional)
    let a problem that asks for rounding match a decimal gold by rounding.
    """
    global _POOL
    responses, golds = list(responses), list(golds)
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
    for i, (response, gold) in enumerate(zip(responses, golds)):
        if gold is None or not str(gold).strip():
            raise ValueError(f"gold answer of item {i} is empty: {gold!r}")
        if not isinstance(response, str):
            raise TypeError(f"response of item {i} is {type(response).__name__}, not str")
    golds = [str(g) for g in golds]
    problems = [None] * len(golds) if problems is None else list(problems)
    if len(problems) != len(golds):
        raise ValueError(f"{len(problems)} problems but {len(golds)} golds")
    if workers == 0:
        return [score(r, g, timeout, p) for r, g, p in zip(responses, golds, problems)]
    if _POOL is None or _POOL.size != workers or _POOL.owner_pid != os.getpid():
        if _POOL is not None:
            _POOL.close()
        _POOL = VerifierPool(workers)
    return _POOL.score(responses, golds, timeout, problems)


def _worker_main():
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the result stream
    out.write(_RECORD.pack(-1, 0.0))
    out.flush()
    while True:
        header = inp.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return  # parent closed the pipe or died
        items = pickle.loads(inp.read(_HEADER.unpack(header)[0]))
        for idx, response, gold, problem in items:
            try:
                value = score(response, gold, timeout=None, problem=problem)  # the parent enforces the limit
            except MemoryError:
                value = 0.0
            out.write(_RECORD.pack(idx, value))
            out.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()