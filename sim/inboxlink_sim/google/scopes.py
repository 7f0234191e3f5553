"""Accepted OAuth scopes and response schemas of each simulated Gmail method.

Generated from the Gmail discovery document shipped in google-api-python-client
(``discovery_cache/documents/gmail.v1.json``, revision 20261005); the test suite checks that this
table still equals the discovery document, which is the source of truth.
"""

from __future__ import annotations

MAIL = "https://mail.google.com/"
AUTH = "https://www.googleapis.com/auth/"


def _s(*names: str) -> frozenset[str]:
    return frozenset(MAIL if n == "MAIL" else AUTH + n for n in names)


#: method id -> scopes any one of which grants access.
METHOD_SCOPES: dict[str, frozenset[str]] = {
    "gmail.users.getProfile": _s("MAIL", "gmail.compose", "gmail.metadata", "gmail.modify", "gmail.readonly"),
    "gmail.users.watch": _s("MAIL", "gmail.metadata", "gmail.modify", "gmail.readonly"),
    "gmail.users.stop": _s("MAIL", "gmail.metadata", "gmail.modify", "gmail.readonly"),
    "gmail.users.drafts.create": _s(
        "MAIL", "gmail.addons.current.action.compose", "gmail.compose", "gmail.modify"
    ),
    "gmail.users.drafts.delete": _s(
        "MAIL", "gmail.addons.current.action.compose", "gmail.compose", "gmail.modify"
    ),
    "gmail.users.drafts.get": _s("MAIL", "gmail.compose", "gmail.modify", "gmail.readonly"),
    "gmail.users.drafts.list": _s("MAIL", "gmail.compose", "gmail.modify", "gmail.readonly"),
    "gmail.users.drafts.send": _s(
        "MAIL", "gmail.addons.current.action.compose", "gmail.compose", "gmail.modify"
    ),
    "gmail.users.drafts.update": _s(
        "MAIL", "gmail.addons.current.action.compose", "gmail.compose", "gmail.modify"
    ),
    "gmail.users.history.list": _s("MAIL", "gmail.metadata", "gmail.modify", "gmail.readonly"),
    "gmail.users.labels.create": _s("MAIL", "gmail.labels", "gmail.modify"),
    "gmail.users.labels.delete": _s("MAIL", "gmail.labels", "gmail.modify"),
    "gmail.users.labels.get": _s("MAIL", "gmail.labels", "gmail.metadata", "gmail.modify", "gmail.readonly"),
    "gmail.users.labels.list": _s("MAIL", "gmail.labels", "gmail.metadata", "gmail.modify", "gmail.readonly"),
    "gmail.users.labels.patch": _s("MAIL", "gmail.labels", "gmail.modify"),
    "gmail.users.labels.update": _s("MAIL", "gmail.labels", "gmail.modify"),
    "gmail.users.messages.batchDelete": _s("MAIL"),
    "gmail.users.messages.batchModify": _s("MAIL", "gmail.modify"),
    "gmail.users.messages.delete": _s("MAIL"),
    "gmail.users.messages.get": _s(
        "MAIL",
        "gmail.addons.current.message.action",
        "gmail.addons.current.message.metadata",
        "gmail.addons.current.message.readonly",
        "gmail.metadata",
        "gmail.modify",
        "gmail.readonly",
    ),
    "gmail.users.messages.import": _s("MAIL", "gmail.insert", "gmail.modify"),
    "gmail.users.messages.insert": _s("MAIL", "gmail.insert", "gmail.modify"),
    "gmail.users.messages.list": _s("MAIL", "gmail.metadata", "gmail.modify", "gmail.readonly"),
    "gmail.users.messages.modify": _s("MAIL", "gmail.modify"),
    "gmail.users.messages.send": _s(
        "MAIL", "gmail.addons.current.action.compose", "gmail.compose", "gmail.modify", "gmail.send"
    ),
    "gmail.users.messages.trash": _s("MAIL", "gmail.modify"),
    "gmail.users.messages.untrash": _s("MAIL", "gmail.modify"),
    "gmail.users.messages.attachments.get": _s(
        "MAIL",
        "gmail.addons.current.message.action",
        "gmail.addons.current.message.readonly",
        "gmail.modify",
        "gmail.readonly",
    ),
    "gmail.users.threads.delete": _s("MAIL"),
    "gmail.users.threads.get": _s(
        "MAIL",
        "gmail.addons.current.message.action",
        "gmail.addons.current.message.metadata",
        "gmail.addons.current.message.readonly",
        "gmail.metadata",
        "gmail.modify",
        "gmail.readonly",
    ),
    "gmail.users.threads.list": _s("MAIL", "gmail.metadata", "gmail.modify", "gmail.readonly"),
    "gmail.users.threads.modify": _s("MAIL", "gmail.modify"),
    "gmail.users.threads.trash": _s("MAIL", "gmail.modify"),
    "gmail.users.threads.untrash": _s("MAIL", "gmail.modify"),
    "gmail.users.settings.sendAs.list": _s("MAIL", "gmail.modify", "gmail.readonly", "gmail.settings.basic"),
    "gmail.users.settings.sendAs.get": _s("MAIL", "gmail.modify", "gmail.readonly", "gmail.settings.basic"),
}

#: method id -> name of the discovery schema of its response body (None: empty body).
METHOD_RESPONSE_SCHEMA: dict[str, str | None] = {
    "gmail.users.getProfile": "Profile",
    "gmail.users.watch": "WatchResponse",
    "gmail.users.stop": None,
    "gmail.users.drafts.create": "Draft",
    "gmail.users.drafts.delete": None,
    "gmail.users.drafts.get": "Draft",
    "gmail.users.drafts.list": "ListDraftsResponse",
    "gmail.users.drafts.send": "Message",
    "gmail.users.drafts.update": "Draft",
    "gmail.users.history.list": "ListHistoryResponse",
    "gmail.users.labels.create": "Label",
    "gmail.users.labels.delete": None,
    "gmail.users.labels.get": "Label",
    "gmail.users.labels.list": "ListLabelsResponse",
    "gmail.users.labels.patch": "Label",
    "gmail.users.labels.update": "Label",
    "gmail.users.messages.batchDelete": None,
    "gmail.users.messages.batchModify": None,
    "gmail.users.messages.delete": None,
    "gmail.users.messages.get": "Message",
    "gmail.users.messages.import": "Message",
    "gmail.users.messages.insert": "Message",
    "gmail.users.messages.list": "ListMessagesResponse",
    "gmail.users.messages.modify": "Message",
    "gmail.users.messages.send": "Message",
    "gmail.users.messages.trash": "Message",
    "gmail.users.messages.untrash": "Message",
    "gmail.users.messages.attachments.get": "MessagePartBody",
    "gmail.users.threads.delete": None,
    "gmail.users.threads.get": "Thread",
    "gmail.users.threads.list": "ListThreadsResponse",
    "gmail.users.threads.modify": "Thread",
    "gmail.users.threads.trash": "Thread",
    "gmail.users.threads.untrash": "Thread",
    "gmail.users.settings.sendAs.list": "ListSendAsResponse",
    "gmail.users.settings.sendAs.get": "SendAs",
}

#: Scope descriptions shown on the consent page (Gmail ones from the discovery document).
_DESCRIPTIONS: list[tuple[str, str]] = [
    ("openid", "Associate you with your personal info on Google"),
    ("userinfo.email", "See your primary Google Account email address"),
    (
        "userinfo.profile",
        "See your personal info, including any personal info you've made publicly available",
    ),
    ("MAIL", "Read, compose, send, and permanently delete all your email from Gmail"),
    (
        "gmail.addons.current.action.compose",
        "Manage drafts and send emails when you interact with the add-on",
    ),
    ("gmail.addons.current.message.action", "View your email messages when you interact with the add-on"),
    ("gmail.addons.current.message.metadata", "View your email message metadata when the add-on is running"),
    ("gmail.addons.current.message.readonly", "View your email messages when the add-on is running"),
    ("gmail.compose", "Manage drafts and send emails"),
    ("gmail.insert", "Add emails into your Gmail mailbox"),
    ("gmail.labels", "See and edit your email labels"),
    ("gmail.metadata", "View your email message metadata such as labels and headers, but not the email body"),
    ("gmail.modify", "Read, compose, and send emails from your Gmail account"),
    ("gmail.readonly", "View your email messages and settings"),
    ("gmail.send", "Send email on your behalf"),
    ("gmail.settings.basic", "See, edit, create, or change your email settings and filters in Gmail"),
    ("gmail.settings.sharing", "Manage your sensitive mail settings, including who can manage your mail"),
    # Calendar v3 and People v1 (their discovery documents' wording): accepted on the consent page so
    # that a client can ask for calendar and contacts features; their APIs are not simulated yet.
    (
        "calendar",
        "See, edit, share, and permanently delete all the calendars you can access using Google Calendar",
    ),
    ("calendar.events", "View and edit events on all your calendars"),
    ("calendar.events.freebusy", "See the availability on Google calendars you have access to"),
    ("calendar.events.readonly", "View events on all your calendars"),
    ("calendar.freebusy", "View your availability in your calendars"),
    ("calendar.readonly", "See and download any calendar you can access using your Google Calendar"),
    ("calendar.settings.readonly", "View your Calendar settings"),
    ("contacts", "See, edit, download, and permanently delete your contacts"),
    ("contacts.other.readonly", 'See and download contact info automatically saved in your "Other contacts"'),
    ("contacts.readonly", "See and download your contacts"),
    ("directory.readonly", "See and download your organization's Google Workspace directory"),
]
SCOPE_DESCRIPTIONS: dict[str, str] = {
    (n if n == "openid" else MAIL if n == "MAIL" else AUTH + n): d for n, d in _DESCRIPTIONS
}
