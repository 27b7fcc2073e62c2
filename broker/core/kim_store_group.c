/*  kim_store_group.c — entries that many messages of one batch share.

    Some entries are the same for every message of a batch but for one
    name: the deadline timers of a batch's REFERRALs are all due at the
    same moment (the batch's clock plus the same answer period), and so are
    the inactivity timers of the cases they open. Written one by one they
    cost a put per message; gathered, one put per batch.

    kim_store_group_add gathers a member under a group key; the commit
    writes each group before LMDB's commit, KIM_STORE_GROUP_PART members at
    most to a value, under the key
        group | the batch's transaction id (u64 BE) | part (u16 BE)
    so that no batch's entry meets another's. A value is
        [u8 0][u8 size][member] [u8 size][member] ...
    The leading 0 sets it apart from one-entry forms a tree kept before
    (a timer's value was its kind: one byte, never 0).

    The batch does not read its own groups back: they are written when it
    commits. A batch that is abandoned or replayed (a full map) forgets
    what it gathered, as LMDB forgets its writes.

    Part of the store module (kim_store_int.h).
*/
#include <czmq.h>
#include <stdlib.h>
#include <string.h>

#include "kim/kim_error.h"
#include "kim/kim_log.h"
#include "kim_store_int.h"

struct _kim_store_group_t {
    kim_db_t db;
    uint8_t key [KIM_STORE_GROUP_MAX];
    size_t key_size;
    uint8_t *members;           //  [u8 size][bytes] ...
    size_t size;
    size_t capacity;
    size_t count;
};

int
kim_store_group_add (kim_store_t *self, kim_db_t db, const void *group, size_t group_size,
                     const void *member, size_t member_size)
{
    int rc = kim_store_i_writable (self, "group_add");
    if (rc)
        return rc;
    if ((unsigned) db >= KIM_DB_COUNT || !group || group_size == 0
    ||  group_size > KIM_STORE_GROUP_MAX || !member || member_size == 0 || member_size > 255)
        return -KIM_E_ARGS;
    kim_store_group_t *found = NULL;
    for (size_t i = 0; i < self->group_count && !found; i++)
        if (self->groups [i].db == db && self->groups [i].key_size == group_size
        &&  memcmp (self->groups [i].key, group, group_size) == 0)
            found = &self->groups [i];
    if (!found) {
        if (self->group_count == self->group_max) {
            size_t max = self->group_max? self->group_max * 2: 8;
            kim_store_group_t *groups = (kim_store_group_t *) realloc (self->groups,
                                                                       max * sizeof *groups);
            if (!groups)
                return -KIM_E_NOMEM;
            memset (groups + self->group_max, 0, (max - self->group_max) * sizeof *groups);
            self->groups = groups;
            self->group_max = max;
        }
        found = &self->groups [self->group_count++];
        found->db = db;
        memcpy (found->key, group, group_size);
        found->key_size = group_size;
        found->size = found->count = 0;     //  keeps its buffer from an earlier batch
    }
    if (found->capacity - found->size < 1 + member_size) {
        size_t capacity = found->capacity? found->capacity * 2: 1024;
        while (capacity - found->size < 1 + member_size)
            capacity *= 2;
        uint8_t *members = (uint8_t *) realloc (found->members, capacity);
        if (!members)
            return -KIM_E_NOMEM;
        found->members = members;
        found->capacity = capacity;
    }
    found->members [found->size++] = (uint8_t) member_size;
    memcpy (found->members + found->size, member, member_size);
    found->size += member_size;
    found->count++;
    return 0;
}

const uint8_t *
kim_store_group_next (const MDB_val *value, size_t *at, size_t *size)
{
    const uint8_t *bytes = (const uint8_t *) value->mv_data;
    if (*at == 0) {
        if (value->mv_size < 3 || bytes [0] != 0)
            return NULL;
        *at = 1;
    }
    if (*at >= value->mv_size)
        return NULL;
    size_t member_size = bytes [*at];
    if (member_size == 0 || member_size > value->mv_size - *at - 1)
        return NULL;
    *size = member_size;
    *at += 1 + member_size;
    return bytes + *at - member_size;
}

//  Writes one part: `count` members from `from` (`size` bytes).
static int
s_part_put (kim_store_t *self, const kim_store_group_t *group, uint64_t txn_id, uint16_t part,
            const uint8_t *from, size_t size)
{
    uint8_t key [KIM_STORE_GROUP_MAX + 10];
    memcpy (key, group->key, group->key_size);
    kim_log_put_be64 (key + group->key_size, txn_id);
    key [group->key_size + 8] = (uint8_t) (part >> 8);
    key [group->key_size + 9] = (uint8_t) part;
    MDB_val k = { group->key_size + 10, key }, value = { 1 + size, NULL };
    int rc = kim_store_put (self, group->db, &k, &value, MDB_RESERVE);
    if (rc)
        return kim_store_i_write_error (self, rc, "writing a group");
    uint8_t *at = (uint8_t *) value.mv_data;
    at [0] = 0;
    memcpy (at + 1, from, size);
    return 0;
}

int
kim_store_i_groups_write (kim_store_t *self)
{
    uint64_t txn_id = (uint64_t) mdb_txn_id (self->txn);
    for (size_t i = 0; i < self->group_count; i++) {
        const kim_store_group_t *group = &self->groups [i];
        size_t start = 0, at = 0, count = 0;
        uint16_t part = 0;
        while (at < group->size) {
            at += 1 + group->members [at];
            if (++count == KIM_STORE_GROUP_PART || at == group->size) {
                int rc = s_part_put (self, group, txn_id, part++, group->members + start,
                                     at - start);
                if (rc)
                    return rc;
                start = at;
                count = 0;
            }
        }
    }
    self->group_count = 0;
    return 0;
}

void
kim_store_i_groups_drop (kim_store_t *self)
{
    self->group_count = 0;
}

void
kim_store_i_groups_free (kim_store_t *self)
{
    for (size_t i = 0; i < self->group_max; i++)
        free (self->groups [i].members);
    free (self->groups);
    self->groups = NULL;
    self->group_count = self->group_max = 0;
}
