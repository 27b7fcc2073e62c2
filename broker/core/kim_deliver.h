/*  kim_deliver.h — deliveries from the mailboxes to the agents' windows.
    Private to the broker's core; see kim_deliver.c.
*/
#ifndef KIM_DELIVER_H_INCLUDED
#define KIM_DELIVER_H_INCLUDED

#include "kim_server_int.h"

//  Fills the window of every organisation marked dirty (kim_server_mark_dirty)
//  from its mailbox, up to the store's synced head; `now` is the monotonic
//  clock (ms) the flights are stamped with.
void
    kim_deliver_dirty (kim_server_t *self, uint64_t now);

//  Sends again, with the same seq, each delivery in flight longer than
//  broker/redeliver_ms.
void
    kim_deliver_overdue (kim_server_t *self, uint64_t now);

#endif
