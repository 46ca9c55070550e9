"""Long-term memory: overflow into chat_history.txt, recall, restarts, durability, /forget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from qwen_kit.chat.engine import ChatEngine, GenerationSettings
from qwen_kit.chat.memory import LongTermMemory, MemoryFile, MemoryRecord
from tests.conftest import ROOT, run_script

FACT = "My first car was a green 1998 Volvo that I named Brumle."
FILLERS = [f"Tell me one thing about topic number {i}: gardening, tides, bread or trains." for i in range(30)]


def _engine(tiny, memory, max_context=512):
    return ChatEngine(tiny.model, tiny.tokenizer, settings=GenerationSettings(max_new_tokens=16, greedy=True),
                      max_context=max_context, eos_token_ids=tiny.eos_token_ids, context_fn=memory,
                      on_evict=memory.remember, on_round=memory.record_round)  # as chat.py wires it


def _file_rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_every_round_is_written_at_once_and_exactly_the_oldest_become_searchable(tiny, embedder, tmp_path):
    path = tmp_path / "chat_history.txt"
    memory = LongTermMemory(path, embedder, tiny.tokenizer, user="alice", max_tokens=60)
    engine = _engine(tiny, memory, max_context=200)
    for i, text in enumerate(FILLERS[:12]):
        turn = engine.add_round(text, f"Reply number {i}.")
        assert turn.stats.prompt_tokens <= engine.budget
        rows = _file_rows(path)
        assert [r["user_text"] for r in rows] == [r.user for r in engine.rounds]  # durable as soon as answered
        searchable = {memory.records[i].user_text for i in memory.retriever.file_hashes}
        assert searchable == {r.user for r in engine.rounds[: engine.window_start]}  # only what left the prompt
    assert engine.window_start >= 3, "twelve rounds cannot fit 200 tokens"
    row = _file_rows(path)[0]
    assert set(row) == {"id", "time", "session", "user", "user_text", "reply"}
    assert row["user"] == "alice" and row["reply"] == "Reply number 0." and row["session"] == memory.session


def test_a_fact_from_30_turns_ago_is_recalled_and_survives_a_restart(tiny, embedder, tmp_path):
    path = tmp_path / "chat_history.txt"
    memory = LongTermMemory(path, embedder, tiny.tokenizer, user="alice", max_tokens=120)
    engine = _engine(tiny, memory, max_context=512)
    engine.add_round(FACT, "Brumle is a fine name for a Volvo.")
    for i, text in enumerate(FILLERS):
        engine.add_round(text, f"Here is something about topic {i}.")
    assert FACT not in [r.user for r in engine.in_prompt()], "the fact must have left the prompt"
    turn = engine.start_turn("What was the name of my first car?")
    assert "Brumle" in turn.prompt
    assert turn.extras["memories"][0]["user_text"] == FACT

    # a new process would start like this: the file is the source of truth
    again = LongTermMemory(path, embedder, tiny.tokenizer, user="alice", max_tokens=120)
    fresh = _engine(tiny, again)
    turn = fresh.start_turn("What was the name of my first car?")
    assert "Brumle" in turn.prompt and again.session != memory.session


def test_chinese_is_stored_readably_and_recalled(tiny, embedder, tmp_path):
    path = tmp_path / "chat_history.txt"
    memory = LongTermMemory(path, embedder, tiny.tokenizer, user="小明", max_tokens=120)
    memory.remember([_round("我的自行车锁密码是 4729。", "记住了。"), _round("今天天气不错。", "是的。")])
    assert "自行车锁密码" in path.read_text(encoding="utf-8") and "\\u" not in path.read_text(encoding="utf-8")
    text, extras = memory("我的自行车锁密码是多少？", [])
    assert extras["memories"][0]["user_text"].startswith("我的自行车锁密码") and "4729" in text


def test_each_user_recalls_only_their_own_memories(tiny, embedder, tmp_path):
    path = tmp_path / "chat_history.txt"
    LongTermMemory(path, embedder, tiny.tokenizer, user="alice").remember([_round(FACT, "ok")])
    bob = LongTermMemory(path, embedder, tiny.tokenizer, user="bob")
    assert bob.records == {} and bob("What was my first car?", [])[1]["memories"] == []
    bob.remember([_round("My first car was a red Fiat.", "ok")])
    alice = LongTermMemory(path, embedder, tiny.tokenizer, user="alice")
    assert [r.user_text for r in alice.records.values()] == [FACT]


NAMES = ["..", ".", "/", "alice/x", "alice_x", "alice%2Fx", "Alice", "alice", "../../etc", "a" * 300,
         "key:alice", "web:alice", "anon:alice", "小明", "CON", " alice", "alice~1"]


def test_user_names_become_distinct_folders_inside_the_index_root(tiny, embedder, tmp_path):
    """Encoded, not stripped: ".." cannot climb out, "alice/x" and "alice_x" never share a
    folder, and "Alice" and "alice" stay apart on a case-insensitive disk too."""
    path = tmp_path / "chat_history.txt"
    root = tmp_path / "chat_history.txt.index"
    folders = []
    for name in NAMES:
        memory = LongTermMemory(path, embedder, tiny.tokenizer, user=name)
        memory.remember([_round(f"a fact of {name}", "ok")])
        memory.save_index()
        assert memory.index_dir.parent == root and memory.index_dir.resolve().parent == root.resolve()
        assert (memory.index_dir / "manifest.json").is_file() and len(memory.index_dir.name.encode()) <= 120
        folders.append(memory.index_dir.name.lower())
    assert len(set(folders)) == len(NAMES)  # distinct even case-folded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat_history.txt", "chat_history.txt.index",
                                                         "chat_history.txt.lock"]
    readable = {n: LongTermMemory(path, embedder, tiny.tokenizer, user=n).index_dir.name
                for n in ("alice", "bob-2", "小明", "key:alice")}
    assert readable["alice"] == "alice" and readable["bob-2"] == "bob-2" and readable["小明"] == "小明"
    assert "alice" in readable["key:alice"]
    for name in NAMES:  # each finds its own memory again
        again = LongTermMemory(path, embedder, tiny.tokenizer, user=name)
        assert [r.user_text for r in again.records.values()] == [f"a fact of {name}"]


def test_forget_deletes_the_line_and_the_retriever_no_longer_returns_it(tiny, embedder, tmp_path):
    path = tmp_path / "chat_history.txt"
    memory = LongTermMemory(path, embedder, tiny.tokenizer, user="alice")
    memory.remember([_round(FACT, "ok"), _round("I live on Rosemary Lane.", "ok")])
    LongTermMemory(path, embedder, tiny.tokenizer, user="bob").remember([_round("Bob's car is a Fiat.", "ok")])
    target = next(r for r in memory.records.values() if r.user_text == FACT)
    assert memory.search("first car name")[0][0].id == target.id
    assert memory.forget(target.id[:6]) == 1
    assert FACT not in path.read_text(encoding="utf-8")
    assert all(r.id != target.id for r, _ in memory.search("first car name Volvo Brumle"))
    # the cached index agrees after a restart, and bob's memories are untouched by alice's "all"
    again = LongTermMemory(path, embedder, tiny.tokenizer, user="alice")
    assert target.id not in again.records and len(again.retriever.chunks) == 1
    assert again.forget("all") == 1
    assert [r["user"] for r in _file_rows(path)] == ["bob"]


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_clean(tiny, embedder, tmp_path, capsys):
    path = tmp_path / "chat_history.txt"
    good = MemoryRecord("aaa", "2026-01-01 10:00:00", "s1", "alice", FACT, "ok")
    path.write_text(good.line() + '{"id": "bbb", "time": "2026-01-01 10:01:00", "sess', encoding="utf-8")
    memory = LongTermMemory(path, embedder, tiny.tokenizer, user="alice")
    assert "line 2: incomplete last line" in capsys.readouterr().err
    assert list(memory.records) == ["aaa"]
    memory.remember([_round("I live on Rosemary Lane.", "ok")])
    records, warnings = MemoryFile(path).read()
    assert [r.user_text for r in records] == [FACT, "I live on Rosemary Lane."]
    assert len(warnings) == 1 and "line 2" in warnings[0]  # the torn line stays, untouched


WRITER = textwrap.dedent("""
    import sys
    from qwen_kit.chat.memory import MemoryFile, MemoryRecord
    f = MemoryFile(sys.argv[1])
    tag, count, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for i in range(count):
        f.append([MemoryRecord(f"{tag}{i}", "2026-01-01 00:00:00", tag, "u", tag * size, str(i))])
        print(i, flush=True)
""")


def _writer(path, tag, count, size):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, str(count), str(size)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)


def test_sigkill_loses_no_completed_round(tmp_path):
    path = tmp_path / "chat_history.txt"
    proc = _writer(path, "k", 100000, 3000)
    acknowledged = -1
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= 40:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    records, warnings = MemoryFile(path).read()
    ids = [r.id for r in records]
    assert ids[: acknowledged + 1] == [f"k{i}" for i in range(acknowledged + 1)]  # every fsynced round
    assert ids == [f"k{i}" for i in range(len(ids))]  # in order, none garbled
    assert len(warnings) <= 1 and all("incomplete last line" in w for w in warnings)


def test_two_writers_do_not_interleave(tmp_path):
    path = tmp_path / "chat_history.txt"
    procs = [_writer(path, tag, 150, 70000) for tag in ("a", "b")]  # lines far above a pipe's atomic size
    for p in procs:
        p.communicate(timeout=120)
        assert p.returncode == 0
    records, warnings = MemoryFile(path).read()
    assert warnings == [] and len(records) == 300
    for tag in "ab":
        mine = [r for r in records if r.session == tag]
        assert [r.reply for r in mine] == [str(i) for i in range(150)] and all(r.user_text == tag * 70000 for r in mine)


def test_chat_script_memory_commands_and_a_second_session(tiny_qwen_dir, tmp_path):
    mem = tmp_path / "work" / "chat_history.txt"
    args = ["--model", str(tiny_qwen_dir), "--greedy", "--max-new-tokens", "8", "--max-context", "400",
            "--memory", "--memory-file", str(mem), "--user", "alice", "--jsonl"]
    first = run_script("chat.py", *args, input="\n".join([FACT, *FILLERS[:6]]) + "\n")
    assert first.returncode == 0, first.stderr.decode()[-1500:]
    assert FACT in mem.read_text(encoding="utf-8")
    second = run_script("chat.py", *args, input="What was the name of my first car?\n/memories first car\n")
    assert second.returncode == 0, second.stderr.decode()[-1500:]
    turn, listing = [json.loads(line) for line in second.stdout.decode().splitlines()]
    assert FACT in [m["user_text"] for m in turn["memories"]]
    fact_id = next(m["id"] for m in listing["memories"] if m["user_text"] == FACT)
    third = run_script("chat.py", *args, input=f"/forget {fact_id}\n/memories first car\n")
    assert third.returncode == 0 and "forgot 1 memory" in third.stderr.decode()
    assert FACT not in mem.read_text(encoding="utf-8")
    assert FACT not in third.stdout.decode()


def test_the_default_memory_file_is_in_the_platform_working_folder(tiny_qwen_dir, tmp_path):
    res = run_script("chat.py", "--model", str(tiny_qwen_dir), "--greedy", "--max-new-tokens", "4", "--memory",
                     input="hello\n", cwd=tmp_path, env={"QWEN_KIT_PLATFORM": "local"})
    assert res.returncode == 0, res.stderr.decode()[-1500:]
    assert _file_rows(tmp_path / "chat_history.txt")[0]["user_text"] == "hello"  # kept at the end of the session


def test_memory_eval_script_reports_recall_and_names_a_bad_line(tiny_qwen_dir, tmp_path):
    res = run_script("eval_memory.py", "--dialogue", str(ROOT / "data" / "memory_dialogue.jsonl"), "--model",
                     str(tiny_qwen_dir), "--retrieval-only", "--layout", "user", "system", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr.decode()[-1500:]
    table = (tmp_path / "out" / "memory_eval.md").read_text(encoding="utf-8").splitlines()
    header = [c.strip() for c in next(ln for ln in table if ln.startswith("| layout")).strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in table
            if ln.startswith(("| user", "| system"))]
    # two columns: a fact still in the prompt is not a memory recalled, and does not count as one
    assert len(rows) == 2 and all(float(r["recalled from memory"]) >= 0.9 for r in rows)
    assert all(float(r["still in the prompt"]) == 0.0 for r in rows)  # every fact left the 512-token prompt
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user": "hi"}\n{"user": "x", "expect": "Brumle"}\n', encoding="utf-8")
    res = run_script("eval_memory.py", "--dialogue", str(bad), "--model", str(tiny_qwen_dir), "--retrieval-only")
    assert res.returncode == 2 and f"{bad}: line 2 'expect' must be a non-empty list" in res.stderr.decode()


def _round(user, reply):
    from qwen_kit.chat.prompt import Round

    return Round(user, reply, 1764000000.0)


@pytest.fixture(autouse=True)
def _no_stray_platform(monkeypatch):
    monkeypatch.delenv("QWEN_KIT_PLATFORM", raising=False)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX; on Windows the user's profile folder is private")
def test_memory_files_are_private_and_an_existing_shared_file_keeps_its_mode_with_a_warning(tiny, embedder, tmp_path,
                                                                                          capsys):
    import stat

    folder = tmp_path / "new" / "memories"  # the kit creates both levels
    path = folder / "chat_history.txt"
    memory = LongTermMemory(path, embedder, tiny.tokenizer, user="alice", max_tokens=60)
    engine = _engine(tiny, memory, max_context=200)
    for i, text in enumerate(FILLERS[:8]):
        engine.add_round(text, f"Reply number {i}.")
    memory.save_index()
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert path.exists() and mode(path) == 0o600 and mode(path.with_name(path.name + ".lock")) == 0o600
    assert mode(folder) == 0o700 and mode(tmp_path / "new") == 0o700
    index_files = list(memory.index_dir.iterdir())
    assert index_files and all(mode(f) == 0o600 for f in index_files) and mode(memory.index_dir) == 0o700
    record = next(iter(memory.records))
    MemoryFile(path).remove({record})  # forget rewrites the file: still private
    assert mode(path) == 0o600

    shared = tmp_path / "shared.txt"
    shared.write_text("")
    os.chmod(shared, 0o644)
    capsys.readouterr()
    MemoryFile(shared).append([MemoryRecord("r1", "2026-01-01 00:00:00", "s", "bob", "hi", "hello")])
    err = capsys.readouterr().err
    assert mode(shared) == 0o644 and "readable by other users" in err and f"chmod 600 {shared}" in err
    MemoryFile(shared).remove({"r1"})
    assert mode(shared) == 0o644  # forget keeps the mode the user chose


def test_sigkill_after_n_answered_turns_leaves_n_rounds_and_a_restart_adds_no_duplicate(tiny_qwen_dir, tmp_path):
    """The issue's repro through chat.py: --memory --max-context 256, 18 answered turns, kill -9.
    Before, the rounds still in the prompt were lost (16 of 18 in the file)."""
    mem = tmp_path / "chat_history.txt"
    args = [sys.executable, str(ROOT / "scripts" / "chat.py"), "--model", str(tiny_qwen_dir), "--greedy",
            "--max-new-tokens", "6", "--max-context", "256", "--memory", "--memory-file", str(mem), "--user", "kim",
            "--jsonl"]
    env = {**os.environ, "QWEN_KIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    questions = [f"Turn {i}: {FILLERS[i]}" for i in range(18)]
    for q in questions:  # one at a time: each answer is read before the next question is sent
        proc.stdin.write((q + "\n").encode())
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["user"] == q
    proc.send_signal(signal.SIGKILL)  # no exit handler runs
    proc.wait()
    rows = _file_rows(mem)
    assert [r["user_text"] for r in rows] == questions  # all 18, in order, each once

    # a restart reads them as memories (none is in its prompt) and writes none of them again
    again = run_script("chat.py", *args[2:], input="/exit\n", env={"QWEN_KIT_CACHE": str(tmp_path / "cache")})
    assert again.returncode == 0, again.stderr.decode()[-1500:]
    assert [r["user_text"] for r in _file_rows(mem)] == questions


def test_a_round_still_in_the_prompt_is_written_but_not_recalled(tiny, embedder, tmp_path):
    memory = LongTermMemory(tmp_path / "m.txt", embedder, tiny.tokenizer, user="alice", max_tokens=200)
    engine = _engine(tiny, memory, max_context=2000)  # roomy: nothing is evicted
    engine.add_round(FACT, "Brumle is a fine name for a Volvo.")
    assert [r["user_text"] for r in _file_rows(tmp_path / "m.txt")] == [FACT]  # durable at once
    assert memory.search("What was my first car called?") == []  # the model already sees it
    engine.release_window()  # the session ends: now it is a memory, and the file holds it once
    assert [r.user_text for r, _ in memory.search("What was my first car called?")] == [FACT]
    assert [r["user_text"] for r in _file_rows(tmp_path / "m.txt")] == [FACT]
