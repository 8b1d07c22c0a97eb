"""error_details: exception class and message of error notifications."""

from __future__ import annotations

import pytest

from trovemeter.normalise import error_details

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3/dist-packages/trove/taskmanager/models.py", line 512, in create\n'
    "    self._create_server(flavor, image_id, datastore_manager)\n"
    '  File "/usr/lib/python3/dist-packages/trove/taskmanager/models.py", line 790, in _create\n'
    "    raise TroveError(msg)\n"
    "trove.common.exception.TroveError: Server creation failed: No valid host was found.\n"
)


def test_traceback_names_the_class_and_payload_message_wins():
    assert error_details(TRACEBACK, "Creation failed") == \
        ("trove.common.exception.TroveError", "Creation failed")


def test_message_falls_back_to_the_exception_text():
    assert error_details(TRACEBACK, None) == \
        ("trove.common.exception.TroveError", "Server creation failed: No valid host was found.")


def test_multi_line_exception_message():
    text = TRACEBACK.replace("No valid host was found.", "first line\nsecond line")
    assert error_details(text, "") == \
        ("trove.common.exception.TroveError", "Server creation failed: first line\nsecond line")


def test_chained_tracebacks_name_the_last_exception():
    chained = (TRACEBACK + "\nDuring handling of the above exception, another exception "
               "occurred:\n\n" + TRACEBACK.replace("trove.common.exception.TroveError",
                                                   "oslo_messaging.MessagingTimeout"))
    assert error_details(chained, None)[0] == "oslo_messaging.MessagingTimeout"


def test_exception_without_message():
    text = "Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyboardInterrupt\n"
    assert error_details(text, None) == ("KeyboardInterrupt", None)


@pytest.mark.parametrize("text, expected", [
    ("Swift is unreachable", (None, "Swift is unreachable")),  # design note: str(exc)
    ("Timeout waiting: 30s", (None, "Timeout waiting: 30s")),
    ("GuestError: replica lag", ("GuestError", "replica lag")),
    ("trove.common.exception.BackupCreationError: no space",
     ("trove.common.exception.BackupCreationError", "no space")),
])
def test_design_note_exception_strings(text, expected):
    assert error_details(text, None) == expected


def test_nothing_to_report():
    assert error_details(None, None) == (None, None)
    assert error_details("", "") == (None, None)


def test_non_string_values_are_rendered():
    assert error_details({"code": 500}, 42) == (None, "42")
