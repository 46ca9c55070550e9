"""The web UI's service without a browser: addresses and logins, what the page may offer,
and conversations sharing one model."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from platforms import get_platform
from qwen_kit.chat.pipeline import ChatConfig
from qwen_kit.errors import UserError
from qwen_kit.service import ConversationService
from qwen_kit.webui.config import WebConfig, server_address


@pytest.mark.parametrize("kwargs, expected", [
    ({}, ("127.0.0.1", 7860, None)),
    ({"auth": "ann:pw"}, ("127.0.0.1", 7860, [("ann", "pw")])),
    ({"host": "0.0.0.0", "auth": "ann:p:w"}, ("0.0.0.0", 7860, [("ann", "p:w")])),
    ({"host": "0.0.0.0", "no_auth": True}, ("0.0.0.0", 7860, None)),
    ({"host": "::1", "port": 8000}, ("::1", 8000, None)),
])
def test_address_and_login(kwargs, expected):
    a = server_address(WebConfig(**kwargs), get_platform("local"))
    assert (a.host, a.port, a.auth) == expected


@pytest.mark.parametrize("kwargs, message", [
    ({"host": "0.0.0.0"}, "--auth-file FILE"),
    ({"share": True}, "public --share link"),
    ({"auth": "nopassword"}, "USER:PASSWORD"),
    ({"auth": ":pw"}, "USER:PASSWORD"),
    ({"auth": "a:b", "no_auth": True}, "not both"),
    ({"port": 70000}, "--port"),
])
def test_refused_addresses(kwargs, message):
    with pytest.raises(UserError, match=message.replace("-", r"\-")):
        server_address(WebConfig(**kwargs), get_platform("local"))


def test_autodl_listens_on_its_custom_service_port_and_needs_a_login():
    autodl = get_platform("autodl")
    with pytest.raises(UserError, match="--host 0.0.0.0"):
        server_address(WebConfig(), autodl)
    a = server_address(WebConfig(auth="me:secret"), autodl)
    assert (a.host, a.port) == ("0.0.0.0", 6006)
    assert server_address(WebConfig(host="127.0.0.1"), autodl).port == 6006


PERSONA = """name: Ada
description: A patient tutor.
greeting: Hello {{user}}, I am Ada.
"""


@pytest.fixture
def closing():
    """Services a test opens have their batcher threads ended when it finishes."""
    opened = []
    yield lambda service: opened.append(service) or service
    for service in opened:
        service.close_backend()


@pytest.fixture(scope="module")
def service(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("webui-service")
    kb = root / "kb"
    kb.mkdir()
    (kb / "pool.md").write_text("# Pool\n\nThe swimming pool opens at 7 am and closes at 9 pm.\n", encoding="utf-8")
    personas = root / "personas"
    personas.mkdir()
    (personas / "ada.yaml").write_text(PERSONA, encoding="utf-8")
    secret = root / "secret"
    secret.mkdir()
    (secret / "diary.md").write_text("Nobody may read this.\n", encoding="utf-8")
    # a persona whose documents lie outside the folders given at start is not offered
    (personas / "snoop.yaml").write_text(f"name: Snoop\ndocuments: {secret}\n", encoding="utf-8")
    (personas / "broken.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    cfg = WebConfig(chat=ChatConfig(max_new_tokens=16, max_context=512, seed=3,
                                    memory_file=str(root / "chat_history.txt")),
                    knowledge=[str(kb)], personas=[str(personas)])
    service = ConversationService(cfg, loaded=tiny)
    yield service
    service.close_backend()  # its batcher thread ends with the module


def test_offers_only_what_was_given(service):
    assert service.knowledge_choices() == ["(none)", "kb"]
    assert service.persona_choices() == ["(none)", "Ada (ada.yaml)"]  # not Snoop, not the broken file
    with pytest.raises(UserError, match="not one of those given at start"):
        service.conversation(knowledge="/etc")
    with pytest.raises(UserError, match="not one of those given at start"):
        service.conversation(persona="Snoop (snoop.yaml)")


def test_missing_folder_is_a_user_error(tiny, tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        ConversationService(WebConfig(knowledge=[str(tmp_path / "nope")]), loaded=tiny)


def test_conversations_are_independent_and_keep_their_setup(service):
    a = service.conversation(persona="Ada (ada.yaml)")
    b = service.conversation(knowledge="kb")
    assert a.messages() == [{"role": "assistant", "content": "Hello User, I am Ada."}]
    assert b.messages() == []
    list(b.stream("When does the pool open?"))
    assert [r.user for r in b.engine.rounds] == ["When does the pool open?"]
    assert b.engine.rounds[0].extras["sources"][0]["file"] == "pool.md"
    shown = b.messages()
    assert "swimming pool opens at 7 am" in shown[-1]["content"]  # the source, with its chunk text
    assert shown[-1]["metadata"]["title"].startswith("Source [1] · pool.md#0")
    assert [r.user for r in a.engine.rounds] == [""]  # only the greeting
    b.configure(None, None, False)  # knowledge base off: the dialogue stays
    assert [r.user for r in b.engine.rounds] == ["When does the pool open?"]
    b.configure("Ada (ada.yaml)", None, False)  # another persona: a new dialogue with its greeting
    assert [r.user for r in b.engine.rounds] == [""]


def test_conversations_are_generated_together(service):
    """A second conversation does not wait for the first: while the first's long reply is
    being generated, the second's short one starts, shares the batch and ends first."""
    from dataclasses import replace

    first, second = service.conversation(), service.conversation()
    first.set_sampling(replace(first.engine.settings, max_new_tokens=400, greedy=True))  # never ends early
    stream = first.stream("Tell me a long story")
    next(stream)  # its prompt is ready
    next(stream)  # and its first text generated: the first conversation is running
    finished = threading.Event()

    def other() -> None:
        list(second.stream("And me?"))
        finished.set()

    threading.Thread(target=other, daemon=True).start()
    pieces_meanwhile = 0
    for _ in stream:  # the first keeps streaming...
        pieces_meanwhile += 1
        if finished.is_set():
            break
    assert finished.is_set(), "the second conversation only ran after the first had ended"
    list(stream)
    assert [r.user for r in second.engine.rounds] == ["And me?"] and first.engine.rounds
    assert service.backend.batcher.largest_batch >= 2


def test_reset_keeps_rounds_in_memory_and_export_writes_json(service, tmp_path):
    import json

    conv = service.conversation(memory=True)
    list(conv.stream("My locker number is 4417."))
    path = conv.export(tmp_path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert [r["user"] for r in data["rounds"]] == ["My locker number is 4417."]
    other = service.conversation()  # another tab exporting in the same second gets its own file
    assert other.export(tmp_path) != path and json.loads(path.read_text(encoding="utf-8")) == data
    assert conv.reset() == 1
    assert conv.engine.rounds == []
    assert any("4417" in row[2] for row in service.memories("locker"))
    memory_id = next(row[0] for row in service.memories() if "4417" in row[2])
    assert service.forget(memory_id) == 1
    assert not any("4417" in row[2] for row in service.memories())
    assert "4417" not in Path(service.memory.file.path).read_text(encoding="utf-8")


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "add --auth-file FILE"),
    (["--kb", "no/such/folder"], "no/such/folder: no such file or folder"),
    (["--auth", "justaname"], "--auth must look like USER:PASSWORD"),
])
def test_script_refuses_with_one_line(args, message, tmp_path, tiny_qwen_dir):
    from tests.conftest import run_script

    r = run_script("webui.py", "--model", str(tiny_qwen_dir), *args, "--memory-file", str(tmp_path / "m.txt"), timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_make_webui_passes_its_variables():
    from tests.conftest import make_dry_run

    line = next(ln for ln in make_dry_run("webui", "MODEL=Qwen/Qwen2.5-1.5B-Instruct", "ADAPTER=out/final",
                                          "KB=docs_a docs_b", "AUTH_FILE=logins.txt", "PORT=6006").splitlines()
                if "scripts/webui.py" in ln)
    assert ("scripts/webui.py --model Qwen/Qwen2.5-1.5B-Instruct --adapter out/final --kb docs_a --kb docs_b "
            "--personas data/personas --port 6006 --auth-file logins.txt") in " ".join(line.split())


def test_logins_come_from_a_file_or_the_environment_and_argv_warns(tmp_path, monkeypatch, capsys):
    import os

    logins = tmp_path / "logins.txt"
    logins.write_text("# who may log in\nann:pw one\n\nbob:s:e:c\n", encoding="utf-8")
    os.chmod(logins, 0o600)
    local = get_platform("local")
    assert server_address(WebConfig(host="0.0.0.0", auth_file=str(logins)), local).auth == [("ann", "pw one"),
                                                                                             ("bob", "s:e:c")]
    monkeypatch.setenv("QWEN_KIT_WEBUI_AUTH", "cy:pw3,dee:pw4")
    assert server_address(WebConfig(share=True), local).auth == [("cy", "pw3"), ("dee", "pw4")]
    assert "warning" not in capsys.readouterr().err
    monkeypatch.delenv("QWEN_KIT_WEBUI_AUTH")
    server_address(WebConfig(auth="ann:pw"), local)
    assert "--auth puts the password in the process list" in capsys.readouterr().err
    logins.write_text("ann:pw\nbroken-line\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"logins.txt line 2 must look like USER:PASSWORD"):
        server_address(WebConfig(auth_file=str(logins)), local)
    os.chmod(logins, 0o644)
    logins.write_text("ann:pw\n", encoding="utf-8")
    server_address(WebConfig(auth_file=str(logins)), local)
    assert "readable by other users" in capsys.readouterr().err
    with pytest.raises(UserError, match="no such file"):
        server_address(WebConfig(auth_file=str(tmp_path / "none.txt")), local)


def test_a_saved_index_is_offered_and_sampling_settings_apply(tiny, closing, embedder, tmp_path):
    from qwen_kit.retrieval.index import build_index
    from qwen_kit.service.conversations import sampling_from

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bus.md").write_text("# Bus\n\nThe campus bus leaves every 20 minutes from the north gate.\n")
    build_index(docs, tmp_path / "bus-index", embedder, progress=False)
    with pytest.raises(UserError, match="--max-context 512 leaves 0 prompt tokens"):  # at start, not in the page
        ConversationService(WebConfig(chat=ChatConfig(max_context=512, memory_file=str(tmp_path / "m.txt"))), loaded=tiny)
    service = closing(ConversationService(WebConfig(chat=ChatConfig(max_context=512, max_new_tokens=64,
                                                       memory_file=str(tmp_path / "m.txt")),
                                       knowledge=[str(tmp_path / "bus-index")]), loaded=tiny))
    assert service.knowledge_choices() == ["(none)", "bus-index"]
    conv = service.conversation(knowledge="bus-index")
    conv.set_sampling(sampling_from(service.cfg.chat, greedy=True, max_new_tokens=3))
    list(conv.stream("How often does the bus leave?"))
    turn_extras = conv.engine.rounds[-1].extras
    assert turn_extras["sources"][0]["file"] == "bus.md"
    assert len(tiny.tokenizer(conv.engine.rounds[-1].assistant)["input_ids"]) <= 3
    with pytest.raises(UserError, match="below the context"):
        conv.set_sampling(sampling_from(service.cfg.chat, max_new_tokens=512))


def test_a_broken_persona_named_on_the_command_line_stops_the_start(tiny, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(UserError, match="bad.yaml"):
        ConversationService(WebConfig(personas=[str(bad)]), loaded=tiny)


def test_each_login_has_its_own_memories(tiny, closing, tmp_path):
    from qwen_kit.chat.pipeline import ChatConfig

    cfg = WebConfig(chat=ChatConfig(memory_file=str(tmp_path / "m.txt"), max_new_tokens=8, greedy=True,
                                    max_context=512), memory=True)
    service = closing(ConversationService(cfg, loaded=tiny))
    ann, bob = service.conversation(login="ann"), service.conversation(login="bob")
    for conv, text in ((ann, "My locker number is 4417."), (bob, "My bike is red.")):
        for _ in conv.stream(text):
            pass
        conv.reset()  # the rounds go to that login's memory
    assert [row[2] for row in service.memories(login="ann")] == ["My locker number is 4417."]
    assert [row[2] for row in service.memories(login="bob")] == ["My bike is red."]
    assert service.memories() == []  # no login: the one local user, who has none
    assert service.forget("all", login="bob") == 1
    assert [row[2] for row in service.memories(login="ann")] == ["My locker number is 4417."]
    rows = [json.loads(x) for x in (tmp_path / "m.txt").read_text(encoding="utf-8").splitlines()]
    assert [(r["user"], r["user_text"]) for r in rows] == [("web:ann", "My locker number is 4417.")]


def test_open_memories_are_a_bounded_cache_and_logins_are_their_own_namespace(tiny, closing, tmp_path):
    """Many distinct users do not keep a memory object each forever; a login named like an
    API caller's 'user' never shares its memories."""
    import gc

    from qwen_kit.chat.pipeline import ChatConfig
    from qwen_kit.service.conversations import MEMORY_CACHE

    cfg = WebConfig(chat=ChatConfig(memory_file=str(tmp_path / "m.txt"), max_new_tokens=8, max_context=512),
                    memory=True)
    service = closing(ConversationService(cfg, loaded=tiny))
    for i in range(MEMORY_CACHE + 40):
        service.memory_of(f"anon:user{i}")
    gc.collect()
    assert service.open_memories() <= MEMORY_CACHE + 1  # + the local user's
    held = service.conversation(login="ann")  # an open conversation keeps its memory object in use
    for i in range(MEMORY_CACHE + 5):
        service.memory_of(f"anon:more{i}")
    assert service.memory_for("ann") is held.chat.memory
    assert service.memory_for("ann").user == "web:ann" and service.memory_for(None).user == cfg.chat.user

