"""Message headers the Python client's tests share."""

STATUTE = {"kind": "statute", "citation": "SGB X §69(1)1"}


def referral(referral_id, case_id, recipient="soz.rheine", **extra):
    """A REFERRAL header under a statute the shipped policy allows; `extra`
    adds or replaces fields."""
    hdr = {"type": "REFERRAL", "recipient": recipient, "referral_id": referral_id,
           "case_id": case_id, "subject": "p-7f3a", "purpose": "benefits",
           "legal_basis": STATUTE}
    hdr.update(extra)
    return hdr
