from treepref.extract.quality import pair_label_quality


def test_pair_label_quality_counts_by_exact_checks():
    rows = [
        {"chosen": "3 + 4 = 7\n\n", "rejected": "3 + 4 = 8\n\n"},  # right
        {"chosen": "3 + 4 = 9\n\n", "rejected": "3 + 4 = 7\n\n"},  # inverted
        {"chosen": "3 + 4 = 7", "rejected": "7 * 2 = 14"},  # both right: uninformative
        {"chosen": "Let us add.", "rejected": "3 + 4 = 8"},  # not checkable
        {"chosen": [{"role": "assistant", "content": "2 * 5 = 10"}],
         "rejected": [{"role": "assistant", "content": "2 * 5 = 12"}]},  # conversational layout, right
    ]
    q = pair_label_quality(rows)
    assert (q["pairs"], q["checkable"], q["right"], q["inverted"], q["uninformative"]) == (5, 4, 2, 1, 1)
    assert q["right_share"] == 0.5 and q["inverted_share"] == 0.25
    assert pair_label_quality([])["right_share"] is None
