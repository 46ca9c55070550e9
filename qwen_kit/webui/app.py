"""The Gradio page over the conversation service (:class:`~qwen_kit.service.ConversationService`).

Each browser tab gets its own :class:`~qwen_kit.service.Conversation` (Gradio session
state); all of them share the one model through the continuous batcher, so tabs are answered
at the same time, up to ``--max-batch`` of them. A tab that finds every slot taken sees a
waiting note on the chat itself.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qwen_kit.door import DoorMiddleware, DoorPolicy, check_port_free
from qwen_kit.errors import UserError
from qwen_kit.service.conversations import NONE, Conversation, ConversationService, sampling_from
from qwen_kit.webui.config import WebConfig, server_address

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a closed network
try:
    import gradio as gr
    from starlette.middleware import Middleware
except ImportError:  # the [webui] extra is not installed; run_webui says how to get it
    gr = None

WAITING = "*waiting for the model: every slot is answering another conversation… 等待模型：所有位置都在回答其他对话…*"
UPDATE_S = 0.05  # streaming redraws: 20 per second looks smooth and costs little

CSS = """
#qk-header {margin-bottom: 0}
#qk-header p {margin: 0}
footer {display: none !important}
"""


# The page's own words, in the browser's language (English, or Chinese for zh browsers).
TEXTS = {
    "chat": ("Conversation", "对话"),
    "type": ("Type a message and press Enter", "输入消息，按回车发送"),
    "send": ("Send", "发送"),
    "stop": ("Stop", "停止"),
    "new": ("New conversation", "新对话"),
    "export": ("Export (JSON)", "导出 (JSON)"),
    "exported": ("Exported conversation", "导出的对话"),
    "persona": ("Persona", "人设"),
    "kb": ("Knowledge base", "知识库"),
    "memory": ("Long-term memory", "长期记忆"),
    "sampling": ("Sampling", "采样参数"),
    "greedy": ("Greedy (deterministic)", "贪心解码（结果固定）"),
    "temperature": ("Temperature", "温度 Temperature"),
    "top_p": ("Top-p", "Top-p"),
    "top_k": ("Top-k (0: off)", "Top-k（0 为关闭）"),
    "penalty": ("Repetition penalty", "重复惩罚"),
    "max_new": ("Max new tokens", "最大生成 token 数"),
    "memories": ("Memories", "记忆"),
    "query": ("search (ranked by relevance; empty: latest)", "搜索（按相关度排序；留空显示最近的）"),
    "search": ("Search", "搜索"),
    "forget_id": ("id to forget (or: all)", "要删除的 id（或 all）"),
    "forget": ("Forget", "删除"),
}
I18N = gr.I18n(en={k: en for k, (en, _) in TEXTS.items()},
               **{lang: {k: zh for k, (_, zh) in TEXTS.items()} for lang in ("zh", "zh-CN", "zh-TW", "zh-HK")}) \
    if gr is not None else None


def T(key: str):  # noqa: N802 - reads like a translation marker
    return I18N(key)


def build_page(service: ConversationService) -> Any:
    cfg = service.cfg.chat
    export_dir = Path(tempfile.mkdtemp(prefix="qwen_kit_exports_"))

    def login(request: Any) -> str | None:
        """The logged-in user (Gradio's login); None without a login: the one local user."""
        return getattr(request, "username", None) if request is not None else None

    def ensure(conv: Conversation | None, persona: str, kb: str, memory_on: bool, request: Any) -> Conversation:
        return conv if conv is not None else service.conversation(persona, kb, memory_on, login(request))

    with gr.Blocks(title="qwen_kit chat", fill_height=True) as page:
        conv_state = gr.State(None, delete_callback=lambda conv: conv.close() if conv is not None else None)
        gr.Markdown(f"**qwen_kit chat** · model: `{service.model_name}`", elem_id="qk-header")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(elem_id="qk-chat", height=520, label=T("chat"),
                                     buttons=["copy", "copy_all"], feedback_options=None)
                with gr.Row():
                    box = gr.Textbox(elem_id="qk-input", show_label=False, scale=5, autofocus=True,
                                     placeholder=T("type"))
                    send = gr.Button(T("send"), variant="primary", elem_id="qk-send", scale=1, min_width=80)
                    stop = gr.Button(T("stop"), variant="stop", elem_id="qk-stop", scale=1, min_width=80)
                with gr.Row():
                    reset = gr.Button(T("new"), elem_id="qk-reset", size="sm")
                    export = gr.Button(T("export"), elem_id="qk-export", size="sm")
                exported = gr.File(label=T("exported"), visible=False, elem_id="qk-exported")
            with gr.Column(scale=2):
                persona = gr.Dropdown(service.persona_choices(), value=NONE, label=T("persona"),
                                      elem_id="qk-persona", interactive=len(service.personas) > 0)
                kb = gr.Dropdown(service.knowledge_choices(), value=NONE, label=T("kb"),
                                 elem_id="qk-kb", interactive=len(service.knowledge) > 0)
                memory_on = gr.Checkbox(value=service.cfg.memory, label=T("memory"),
                                        elem_id="qk-memory-switch",
                                        info=f"rounds that leave the prompt go to {service.memory.file.path.name}")
                with gr.Accordion(T("sampling"), open=False, elem_id="qk-sampling"):
                    greedy = gr.Checkbox(value=cfg.greedy, label=T("greedy"))
                    temperature = gr.Slider(0.05, 2.0, value=cfg.temperature, step=0.05, label=T("temperature"))
                    top_p = gr.Slider(0.05, 1.0, value=cfg.top_p, step=0.05, label=T("top_p"))
                    top_k = gr.Slider(0, 200, value=cfg.sample_top_k, step=1, label=T("top_k"))
                    penalty = gr.Slider(1.0, 2.0, value=cfg.repetition_penalty, step=0.01, label=T("penalty"))
                    max_new = gr.Slider(1, max(2, service.max_context // 2), value=cfg.max_new_tokens, step=1,
                                        label=T("max_new"))
                with gr.Accordion(T("memories"), open=False, elem_id="qk-memories"):
                    with gr.Row():
                        query = gr.Textbox(show_label=False, placeholder=T("query"),
                                           elem_id="qk-memory-query", scale=3)
                        search = gr.Button(T("search"), elem_id="qk-memory-search", scale=1, size="sm")
                    table = gr.Dataframe(headers=["id", "time", "you said", "reply"], elem_id="qk-memory-table",
                                         interactive=False, wrap=True,
                                         column_widths=["18%", "18%", "32%", "32%"])
                    with gr.Row():
                        forget_id = gr.Textbox(show_label=False, placeholder=T("forget_id"),
                                               elem_id="qk-forget-id", scale=3)
                        forget = gr.Button(T("forget"), variant="stop", elem_id="qk-forget", scale=1, size="sm")
                    memory_note = gr.Markdown(elem_id="qk-memory-note")

        setup = [persona, kb, memory_on]
        sampling = [greedy, temperature, top_p, top_k, penalty, max_new]

        def on_load(persona_v: str, kb_v: str, mem_v: bool, request: gr.Request):
            conv = service.conversation(persona_v, kb_v, mem_v, login(request))
            return conv, conv.messages(), service.memories(login=login(request))

        def on_setup(conv: Conversation | None, persona_v: str, kb_v: str, mem_v: bool, request: gr.Request):
            conv = ensure(conv, persona_v, kb_v, mem_v, request)
            try:
                conv.configure(persona_v, kb_v, mem_v)
            except UserError as err:
                raise gr.Error(str(err), print_exception=False) from None
            return conv, conv.messages()

        def on_send(conv: Conversation | None, text: str, persona_v: str, kb_v: str, mem_v: bool,
                    greedy_v: bool, temp_v: float, top_p_v: float, top_k_v: int, penalty_v: float, max_new_v: int,
                    request: gr.Request):
            conv = ensure(conv, persona_v, kb_v, mem_v, request)
            text = (text or "").strip()
            if not text:
                yield conv, conv.messages(), gr.update(interactive=True)
                return
            try:
                conv.set_sampling(sampling_from(cfg, greedy=bool(greedy_v), temperature=float(temp_v),
                                                top_p=float(top_p_v), top_k=int(top_k_v),
                                                repetition_penalty=float(penalty_v), max_new_tokens=int(max_new_v)))
                yield conv, conv.messages((text, "", {})), gr.update(value="", interactive=True)
                shown = 0.0
                for reply, extras in conv.stream(text):
                    # redraw at most every UPDATE_S: each redraw sends the whole chat to the browser
                    if time.monotonic() - shown >= UPDATE_S:
                        shown = time.monotonic()
                        yield conv, conv.messages((text, reply, extras)), ""
            except UserError as err:  # a toast; the text stays in the box to edit and resend
                gr.Warning(str(err))
                yield conv, conv.messages(), gr.update(value=text, interactive=True)
                return
            yield conv, conv.messages(), gr.update(value="", interactive=True)

        def on_submit(conv: Conversation | None, text: str, persona_v: str, kb_v: str, mem_v: bool,
                      request: gr.Request):
            """At once, outside the queue: the message shows, and the reply's place says whether
            it waits for another conversation. The box is locked until generation takes it."""
            conv = ensure(conv, persona_v, kb_v, mem_v, request)
            text = (text or "").strip()
            if not text:
                return conv, conv.messages(), gr.update()
            return conv, conv.messages((text, "", {}), WAITING if service.busy else "…"), gr.update(interactive=False)

        def on_reset(conv: Conversation | None, persona_v: str, kb_v: str, mem_v: bool, request: gr.Request):
            conv = ensure(conv, persona_v, kb_v, mem_v, request)
            kept = conv.reset()
            if kept:
                gr.Info(f"{kept} rounds kept in long-term memory")
            return conv, conv.messages(), service.memories(login=login(request))

        def on_export(conv: Conversation | None, persona_v: str, kb_v: str, mem_v: bool, request: gr.Request):
            conv = ensure(conv, persona_v, kb_v, mem_v, request)
            return conv, gr.update(value=str(conv.export(export_dir)), visible=True)

        def on_search(text: str, request: gr.Request):
            return service.memories(text or "", login=login(request))

        def on_forget(target: str, text: str, request: gr.Request):
            try:
                n = service.forget(target or "", login=login(request))
            except UserError as err:
                return gr.update(), f"⚠️ {err}", target
            return service.memories(text or "", login=login(request)), f"forgot {n} memor{'y' if n == 1 else 'ies'}", ""

        def on_pick(evt: gr.SelectData):  # a clicked row fills in its id
            row = evt.row_value if evt.row_value else None
            return row[0] if row else ""

        page.load(on_load, setup, [conv_state, chatbot, table])
        for control in setup:
            control.change(on_setup, [conv_state, *setup], [conv_state, chatbot], concurrency_id="model",
                           api_name="configure")
        sending = [trigger(on_submit, [conv_state, box, *setup], [conv_state, chatbot, box], queue=False,
                           api_visibility="private")
                   .then(on_send, [conv_state, box, *setup, *sampling], [conv_state, chatbot, box],
                         concurrency_id="model", concurrency_limit=service.cfg.max_batch, show_progress="minimal",
                         api_name="send")
                   for trigger in (box.submit, send.click)]
        # the engine stops at the next token; a message still waiting in the queue is withdrawn
        stop.click(lambda: gr.update(interactive=True), None, [box], cancels=sending, queue=False,
                   api_visibility="private")
        reset.click(on_reset, [conv_state, *setup], [conv_state, chatbot, table], concurrency_id="model")
        chatbot.clear(on_reset, [conv_state, *setup], [conv_state, chatbot, table], concurrency_id="model")
        export.click(on_export, [conv_state, *setup], [conv_state, exported])
        search.click(on_search, [query], [table], api_name="memories")
        query.submit(on_search, [query], [table])
        forget.click(on_forget, [forget_id, query], [table, memory_note, forget_id], api_name="forget")
        forget_id.submit(on_forget, [forget_id, query], [table, memory_note, forget_id])
        table.select(on_pick, None, [forget_id])
    page.queue(default_concurrency_limit=service.cfg.max_batch)
    return page


def theme() -> Any:
    # System fonts: Gradio's default theme loads Google Fonts, which a closed network or a
    # mainland-China connection cannot reach (the page then waits for them).
    return gr.themes.Soft(font=["system-ui", "PingFang SC", "Microsoft YaHei", "sans-serif"],
                          font_mono=["ui-monospace", "Consolas", "monospace"])


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_webui(cfg: WebConfig) -> int:
    """Check the address and login, load everything, serve until interrupted."""
    address = server_address(cfg)  # refuse an open public page before loading anything
    check_port_free(address.host, address.port)
    if gr is None:
        raise UserError("the web UI needs Gradio: pip install -e '.[webui]' (or: make webui)")
    service = ConversationService(cfg)
    page = build_page(service)
    # the API server's Host check, before Gradio sees a request (DNS rebinding: qwen_kit/door.py)
    door = Middleware(DoorMiddleware, policy=DoorPolicy.for_address(address.host, cfg.allowed_hosts,
                                                                    allowed_origins=cfg.allowed_origins,
                                                                    share=address.share,
                                                                    authenticated=address.auth is not None))
    try:
        _, local_url, share_url = page.launch(
            server_name=address.host, server_port=address.port, share=address.share, auth=address.auth,
            auth_message="qwen_kit: log in with the --auth user and password", prevent_thread_lock=True,
            ssr_mode=False, show_error=True, quiet=True, theme=theme(), css=CSS, footer_links=[], i18n=I18N,
            allowed_paths=[], pwa=False, mcp_server=False, app_kwargs={"middleware": [door]})
    except OSError as err:
        service.close_all()
        raise UserError(f"cannot listen on {address.host}:{address.port}; choose another --port "
                        f"or stop what uses it ({str(err).splitlines()[0]})") from None
    login = f"  ({len(address.auth)} login(s) required)" if address.auth else ""
    print(f"qwen_kit web UI: {local_url}{login}", file=sys.stderr, flush=True)
    if address.host in ("0.0.0.0", "::"):
        print(f"  listening on every interface, port {address.port}", file=sys.stderr, flush=True)
    if share_url:
        print(f"  public link: {share_url}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` and container stops end it like Ctrl+C
    try:
        page.block_thread()  # until Ctrl+C
    finally:
        service.close_all()  # every open conversation's rounds go to long-term memory
        service.close_backend()
    return 0
