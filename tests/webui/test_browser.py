"""End to end in a real headless Chromium against ``scripts/webui.py`` serving the tiny model.
Each state the page reaches is saved as a screenshot under test-artifacts/webui/."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from tests.webui.conftest import ARTIFACTS, PASSWORD, SEEDED, USER

pytestmark = pytest.mark.timeout(600)


def wait(driver, condition, timeout: float = 30, message: str = ""):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message)
    except TimeoutException:
        shot(driver, "FAILED_" + "".join(c if c.isalnum() else "_" for c in message)[:60])
        raise


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def text_of(driver, selector: str) -> str:
    """The text of the elements matching ``selector`` ("" while the page redraws them)."""
    return "\n".join(texts(driver, selector))


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def login(driver, url: str, user: str = USER, password: str = PASSWORD) -> None:
    driver.get(url + "/")
    wait(driver, lambda d: len(css(d, "input[type=password]")) == 1, message="no login form")
    css(driver, "input[type=text]")[0].send_keys(user)
    css(driver, "input[type=password]")[0].send_keys(password)
    css(driver, "button")[-1].click()  # the login form's only button ("Login", "登录", …)


def open_page(driver, url: str) -> None:
    """A fresh page (a new conversation); logs in when the session has no login yet."""
    driver.get(url + "/")
    wait(driver, lambda d: css(d, "input[type=password]") or css(d, "#qk-input textarea"))
    if css(driver, "input[type=password]"):
        login(driver, url)
    wait(driver, lambda d: css(d, "#qk-input textarea"), message="the chat page did not appear after login")
    wait(driver, lambda d: not css(d, "#qk-chat .pending"), message="the page did not finish loading")


def choose(driver, elem_id: str, label: str) -> None:
    css(driver, f"#{elem_id} input")[0].click()
    option = wait(driver, lambda d: [o for o in css(d, "[role=option]") if o.get_attribute("aria-label") == label],
                  message=f"{label!r} is not offered in #{elem_id}")[0]
    option.click()


def texts(driver, selector: str) -> list[str]:
    """The text of each element matching ``selector`` ([] while the page redraws them)."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return [e.text for e in css(driver, selector)]
    except StaleElementReferenceException:
        return []


def bot_messages(driver) -> list[str]:
    """Text of the assistant's answers (not their source boxes)."""
    return texts(driver, "#qk-chat .bot-row .message:not(.thought) .message-content")


def user_messages(driver) -> list[str]:
    return texts(driver, "#qk-chat .user-row .message-content")


def idle(driver) -> bool:
    """No event running: the send button is enabled again and no status overlay shows."""
    return not [e for e in css(driver, "#qk-chat [data-testid=status-tracker]") if "hide" not in
                (e.get_attribute("class") or "")]


def send(driver, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = css(driver, "#qk-input textarea")[0]
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


RECORD_LENGTHS = """
window.__lengths = [];
const root = document.querySelector('#qk-chat');
new MutationObserver(() => {
  const answers = root.querySelectorAll('.bot-row .message:not(.thought) .message-content');
  const last = answers[answers.length - 1];
  if (last) window.__lengths.push(last.textContent.length);
}).observe(root, {subtree: true, childList: true, characterData: true});
"""


def test_wrong_password_is_refused_in_the_browser(browser, server):
    login(browser, server["url"], password="not-the-password")
    wait(browser, lambda d: "Incorrect" in d.find_element("tag name", "body").text,
         message="a wrong password did not show an error")
    shot(browser, "00_wrong_password")
    assert not css(browser, "#qk-input textarea")


def test_question_streams_an_answer(browser, server):
    open_page(browser, server["url"])
    shot(browser, "01_empty_page")
    browser.execute_script(RECORD_LENGTHS)
    send(browser, "Hello, who are you?")
    wait(browser, lambda d: user_messages(d) == ["Hello, who are you?"], message="the question did not appear")
    wait(browser, lambda d: bot_messages(d) and bot_messages(d)[-1].strip() not in ("", "…") and idle(d),
         timeout=60, message="no answer appeared")
    shot(browser, "02_streamed_answer")
    lengths = browser.execute_script("return window.__lengths")
    grew = sorted(set(n for n in lengths if n > 1))
    # streamed: the answer was drawn in several growing steps, not once at the end
    assert len(grew) >= 3, f"answer lengths seen while generating: {lengths}"
    assert css(browser, "#qk-input textarea")[0].get_attribute("value") == "", "the input box was not cleared"


def test_knowledge_base_answer_shows_its_sources(browser, server):
    open_page(browser, server["url"])
    choose(browser, "qk-kb", "knowledge")
    send(browser, "When is the library open on Sunday?")
    wait(browser, lambda d: [t for t in css(d, "#qk-chat .thought-group .title") if "Source [1]" in t.text],
                  timeout=60, message="no sources under the knowledge-base answer")
    wait(browser, idle, timeout=60)
    shot(browser, "03_sources_collapsed")
    titles = [t.text for t in css(browser, "#qk-chat .thought-group .title")]
    assert any("library.md" in t for t in titles), titles
    # expand the first source: its chunk text (from data/knowledge/library.md) appears
    library = (ROOT / "data" / "knowledge" / "library.md").read_text(encoding="utf-8")
    css(browser, "#qk-chat .thought-group .title")[0].click()
    wait(browser, lambda d: any(line.strip() and line.strip("# ").strip() in d.find_element("id", "qk-chat").text
                                for line in library.splitlines()[2:6]),
         message="expanding a source did not show its chunk text")
    shot(browser, "04_source_expanded")


def test_persona_greets_and_tabs_are_separate_conversations(browser, server):
    open_page(browser, server["url"])
    first_tab = browser.current_window_handle
    choose(browser, "qk-persona", "Maren Holt (lighthouse_keeper.yaml)")
    wait(browser, lambda d: len(bot_messages(d)) == 1 and "Maren" in bot_messages(d)[0] and idle(d),
         message="the persona's greeting did not open the conversation")
    greeting = bot_messages(browser)[0]
    assert greeting and not user_messages(browser)
    send(browser, "Good evening!")
    wait(browser, lambda d: len(bot_messages(d)) == 2 and idle(d), timeout=60, message="no answer")
    shot(browser, "05_persona")
    browser.switch_to.new_window("tab")
    open_page(browser, server["url"])
    assert user_messages(browser) == [] and bot_messages(browser) == [], "a new tab saw another tab's conversation"
    send(browser, "A question from the second tab")
    wait(browser, lambda d: len(bot_messages(d)) == 1 and idle(d), timeout=60, message="no answer in tab 2")
    shot(browser, "06_second_tab")
    browser.close()
    browser.switch_to.window(first_tab)
    assert user_messages(browser) == ["Good evening!"]
    assert bot_messages(browser)[0] == greeting


def test_memory_panel_lists_and_forgets(browser, server):
    open_page(browser, server["url"])
    wait(browser, lambda d: css(d, "#qk-memories button"))[0].click()  # open the accordion
    table = lambda d: text_of(d, "#qk-memory-table")  # noqa: E731
    wait(browser, lambda d: "Mochi" in table(d) and "Chengdu" in table(d), message="seeded memories not listed")
    shot(browser, "07_memories")
    # with the switch on, an answer shows the memories it was given
    css(browser, "#qk-memory-switch input[type=checkbox]")[0].click()
    wait(browser, idle)
    send(browser, "Where was I born?")
    wait(browser, lambda d: "Memories recalled" in text_of(d, "#qk-chat .thought-group .title") and idle(d),
         timeout=60, message="no recalled memories under the answer")
    css(browser, "#qk-chat .thought-group .title")[-1].click()
    wait(browser, lambda d: "I was born in Chengdu." in text_of(d, "#qk-chat"), message="recalled memory not shown")
    shot(browser, "07b_memories_recalled")
    gone = SEEDED[0]
    css(browser, "#qk-forget-id textarea, #qk-forget-id input")[0].send_keys(gone["id"])
    css(browser, "#qk-forget")[0].click()
    wait(browser, lambda d: "Mochi" not in table(d), message="the forgotten memory is still listed")
    assert "Chengdu" in table(browser)
    wait(browser, lambda d: "forgot 1 memory" in text_of(d, "#qk-memory-note"), message="no note after forgetting")
    shot(browser, "08_memory_forgotten")
    lines = [json.loads(x) for x in server["memory_file"].read_text(encoding="utf-8").splitlines() if x.strip()]
    assert gone["id"] not in [r["id"] for r in lines]
    assert SEEDED[1]["id"] in [r["id"] for r in lines]


def test_two_logins_do_not_see_each_others_memories(server, tmp_path):
    """Each login has its own memories: the visitor's panel lists none of the tester's, and the
    visitor's 'forget all' leaves the tester's memories (in the file and in the panel) alone."""
    from gradio_client import Client

    from tests.webui.conftest import OTHER, OTHER_PASSWORD, new_browser

    visitor = new_browser(tmp_path / "visitor-profile")
    try:
        visitor.get(server["url"] + "/")
        login(visitor, server["url"], OTHER, OTHER_PASSWORD)
        wait(visitor, lambda d: css(d, "#qk-input textarea"), message="the visitor's page did not appear")
        wait(visitor, lambda d: css(d, "#qk-memories button"))[0].click()
        table = lambda d: text_of(d, "#qk-memory-table")  # noqa: E731
        wait(visitor, lambda d: table(d) != "", message="the memory table did not render")
        assert "Chengdu" not in table(visitor) and "Mochi" not in table(visitor)
        shot(visitor, "09b_visitor_sees_no_memories")
        css(visitor, "#qk-forget-id textarea, #qk-forget-id input")[0].send_keys("all")
        css(visitor, "#qk-forget")[0].click()
        wait(visitor, lambda d: "forgot 0 memories" in text_of(d, "#qk-memory-note"), message="no note")
    finally:
        visitor.quit()
    lines = [json.loads(x) for x in server["memory_file"].read_text(encoding="utf-8").splitlines() if x.strip()]
    assert SEEDED[1]["id"] in [r["id"] for r in lines]  # the tester's memory survived the visitor's "all"
    # the named API endpoints answer for the caller's own login too
    tester = Client(server["url"], auth=(USER, PASSWORD), verbose=False)
    other = Client(server["url"], auth=(OTHER, OTHER_PASSWORD), verbose=False)
    assert "Chengdu" in json.dumps(tester.predict("born", api_name="/memories"))
    assert "Chengdu" not in json.dumps(other.predict("born", api_name="/memories"))


def test_a_message_sent_while_another_tab_generates_is_answered_at_once(browser, server):
    """Tabs no longer wait for each other: while another conversation (here a client of the
    page's API) is being answered, a new message is answered in the same batch, before the
    other one ends."""
    from gradio_client import Client

    from qwen_kit.webui.app import WAITING

    open_page(browser, server["url"])
    other = Client(server["url"], auth=(USER, PASSWORD), verbose=False)
    # greedy: the random tiny model repeats one token and never ends early, so this reply runs
    # its 500 tokens while the page's message is answered
    job = other.submit("Tell me a very long story.", "(none)", "(none)", False, True, 1.0, 1.0, 0, 1.0, 500,
                       api_name="/send")
    wait(browser, lambda d: len(job.outputs()) >= 2, message="the other conversation never started")
    send(browser, "Am I in the queue?")
    wait(browser, lambda d: bot_messages(d) and bot_messages(d)[-1].strip() not in ("", "…", WAITING.strip("*")),
         timeout=60, message="the message was not answered")
    # one at a time, the reply could only start after the other's 500 tokens
    assert not job.done(), "the other conversation ended first: the two were not generated together"
    shot(browser, "09_answered_alongside_another_tab")
    wait(browser, idle, timeout=60, message="the reply did not finish")
    assert user_messages(browser) == ["Am I in the queue?"]
    job.cancel()


def test_a_chinese_browser_gets_chinese_labels(browser, server, tmp_path):
    from tests.webui.conftest import new_browser

    zh = new_browser(tmp_path / "profile", language="zh-CN")
    try:
        open_page(zh, server["url"])
        wait(zh, lambda d: text_of(d, "#qk-send") == "发送", message="the Send button is not in Chinese")
        assert "人设" in text_of(zh, "#qk-persona") and "知识库" in text_of(zh, "#qk-kb")
        shot(zh, "10_chinese_labels")
    finally:
        zh.quit()
