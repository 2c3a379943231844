"""The notice board on its own: numbered notices, each for an audience, forgotten once had."""

from chatlab.notices import NoticeBoard


def board_with(*notices: tuple[int, str]) -> NoticeBoard:
    board = NoticeBoard()
    for audience, text in notices:
        board.post(audience, f"* {text}\n".encode())
    return board


def test_notices_are_numbered_in_the_order_they_were_posted():
    board = board_with((2, "bob joined"), (3, "carol joined"))
    assert (board.first, board.end, len(board)) == (0, 2, 2)
    assert board.since(0, order=1) == b"* bob joined\n* carol joined\n"
    assert board.since(1, order=1) == b"* carol joined\n"  # it had notice 0 already
    assert board.since(2, order=1) == b""


def test_a_notice_is_only_for_its_audience():
    # alice (order 1) and bob (order 2) were online; carol (3) joined; bob left, seen by 1..3.
    board = board_with((3, "carol joined"), (4, "bob left"))
    assert board.since(0, order=1) == b"* carol joined\n* bob left\n"
    assert board.since(0, order=3) == b"* bob left\n"  # carol does not hear of herself
    assert board.since(0, order=4) == b""  # dave came after both: neither is news to him


def test_forgotten_notices_keep_their_numbers():
    board = board_with((9, "a joined"), (9, "b joined"), (9, "c joined"))
    board.forget_before(2)
    assert (board.first, board.end, len(board)) == (2, 3, 1)
    assert board.since(2, order=1) == b"* c joined\n"
    board.post(9, b"* d joined\n")
    assert board.since(2, order=1) == b"* c joined\n* d joined\n"
    board.forget_before(4)
    assert len(board) == 0 and board.since(4, order=1) == b""
